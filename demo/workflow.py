"""The demo's learning loop as library steps: shoppers' clicks simulated on the served
ranking, a reranker trained on them, installed, and its blend tuned on the training queries
it held out. ``search-cli demo`` calls these and prints what they measured."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from shopsearch.benchmarks.tuning import BlendTuningResult
    from shopsearch.engine import SearchEngine
    from shopsearch.retrieval.types import Product
    from shopsearch.training.clicks import Impression
    from shopsearch.training.pipeline import RerankerRecipeResult


@dataclass
class SimulatedClicks:
    """Generated training queries (``{query_id: text}``), their judgements and the log."""

    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    log: list[Impression]


def simulate_training_clicks(
    engine: SearchEngine, products: list[Product], *, n_queries: int, sessions_per_query: int = 20
) -> SimulatedClicks:
    """Generated two-facet queries (never a facet a demo query asks for) shown to simulated,
    position-biased shoppers: each sees the engine's served ranking's top 10."""
    from shopsearch.demo.queries import training_queries
    from shopsearch.training.pipeline import simulate_click_log

    queries, qrels = training_queries(products, n_queries=n_queries)
    ids = sorted(queries)
    shown = engine.stage(engine.final_stage).search([queries[q] for q in ids], 10)
    log = simulate_click_log(
        {q: [h.product_id for h in hits] for q, hits in zip(ids, shown)},
        qrels,
        queries,
        sessions_per_query=sessions_per_query,
    )
    return SimulatedClicks(queries, qrels, log)


@dataclass
class DemoReranker:
    training: RerankerRecipeResult
    blend: BlendTuningResult
    held_out_queries: int


def train_install_and_tune(
    index_dir: Path,
    clicks: SimulatedClicks,
    products: list[Product],
    base_model: str,
    out_dir: Path,
    *,
    epochs: int = 1,
    propensities: np.ndarray | None = None,
    seed: int = 0,
) -> DemoReranker:
    """Fine-tune a click-probability reranker on the log (IPW with ``propensities``, or ones
    estimated by EM when None), calibrate it, install it into the index, then tune how much
    its click logit decides the order on the training queries it did not train on, and store
    that blend with it."""
    from shopsearch.benchmarks.tuning import held_out_query_ids, store_blend, tune_engine_blend
    from shopsearch.engine import SearchEngine
    from shopsearch.index.store import install_reranker
    from shopsearch.models.registry import resolve_model
    from shopsearch.training.pipeline import train_reranker_from_clicks
    from shopsearch.training.reranker import RerankerTrainingConfig

    base = str(resolve_model(base_model).path or base_model)
    result = train_reranker_from_clicks(
        clicks.log,
        {p.id: p.text() for p in products},
        base,
        out_dir,
        negatives_per_query=3,
        config=RerankerTrainingConfig(
            epochs=epochs,
            batch_size=16,
            learning_rate=1e-4,
            max_length=32,
            freeze_embeddings=True,
            seed=seed,
        ),
        propensities=propensities,
        seed=seed,
    )
    install_reranker(Path(index_dir), out_dir)
    engine = SearchEngine.open(index_dir)
    held = held_out_query_ids(out_dir, clicks.queries)
    blend = tune_engine_blend(
        engine, {q: clicks.queries[q] for q in held}, clicks.qrels, tops=(10, 20, 30)
    )
    store_blend(Path(index_dir), blend, len(held))
    return DemoReranker(result, blend, len(held))
