"""Choosing the fusion setting, and the reranker's blend, from judged queries by grid search.

Both retrievers run once per query; every candidate setting then only re-fuses the cached
lists, so a 50-point grid costs seconds, not 50 retrieval passes. Tune on queries you do not
report on (e.g. a slice of the training queries) or the reported number is optimistic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from shopsearch.benchmarks.metrics import evaluate, hits_to_run
from shopsearch.retrieval.fusion import FusionConfig, fuse
from shopsearch.retrieval.types import Hit

if TYPE_CHECKING:
    from shopsearch.engine import SearchEngine
    from shopsearch.rerank.blend import BlendConfig

RRF_KS = (5.0, 10.0, 20.0, 40.0, 60.0, 100.0)
DENSE_WEIGHTS = (0.25, 0.5, 1.0, 2.0, 4.0)
ALPHAS = tuple(round(a * 0.1, 1) for a in range(11))


def default_grid() -> list[FusionConfig]:
    grid = [
        FusionConfig(method="rrf", rrf_k=k, weights=(1.0, w)) for k in RRF_KS for w in DENSE_WEIGHTS
    ]
    grid += [
        FusionConfig(method="convex", alpha=a, normalization=n)
        for n in ("minmax", "zscore")
        for a in ALPHAS
    ]
    return grid


@dataclass
class TuningResult:
    metric: str
    best: FusionConfig
    best_score: float
    current: FusionConfig
    current_score: float
    table: list[tuple[FusionConfig, float]] = field(default_factory=list)


def score_fusion(
    config: FusionConfig,
    sparse: Mapping[str, list[Hit]],
    dense: Mapping[str, list[Hit]],
    qrels: Mapping[str, Mapping[str, int]],
    metric: str,
    k: int,
) -> float:
    fused = {qid: fuse(sparse.get(qid, []), dense.get(qid, []), config)[:k] for qid in qrels}
    return evaluate(qrels, hits_to_run(fused), [metric])[1][metric]


def tune_fusion(
    sparse: Mapping[str, list[Hit]],
    dense: Mapping[str, list[Hit]],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    current: FusionConfig,
    metric: str = "nDCG@10",
    k: int = 100,
    grid: Sequence[FusionConfig] | None = None,
) -> TuningResult:
    """Score every setting in ``grid`` on the cached per-query lists; the best wins, ties going
    to the earlier (simpler) setting. ``current`` is scored too, for the before/after line."""
    table = [
        (config, score_fusion(config, sparse, dense, qrels, metric, k))
        for config in (grid or default_grid())
    ]
    best, best_score = max(table, key=lambda row: row[1])
    return TuningResult(
        metric=metric,
        best=best,
        best_score=best_score,
        current=current,
        current_score=score_fusion(current, sparse, dense, qrels, metric, k),
        table=table,
    )


# --------------------------------------------------------------------------------------------
# Reranker blend: how much of the final order the click logit decides, and how deep it reaches

BLEND_WEIGHTS = tuple(round(w * 0.1, 1) for w in range(11))
RERANK_TOPS = (10, 20, 30, 50)


@dataclass
class BlendTuningResult:
    metric: str
    best: BlendConfig
    best_score: float
    fused_score: float
    table: list[tuple[BlendConfig, float]] = field(default_factory=list)


def blended_run(
    fused: Mapping[str, list[Hit]],
    logits: Mapping[str, Sequence[float] | np.ndarray],
    config: BlendConfig,
) -> dict[str, list[Hit]]:
    """Each query's fused list in the rerank stage's order at ``config``
    (``rerank.blend.rerank_order``, the function the stage itself calls). ``logits[qid]``
    covers at least the first ``config.top`` hits; probabilities only label hits and never
    change the order, so the plain sigmoid stands in for the calibrator here."""
    from shopsearch.rerank.blend import rerank_order
    from shopsearch.rerank.calibration import sigmoid

    run = {}
    for qid, hits in fused.items():
        head = min(config.top, len(hits))
        click = np.asarray(logits[qid][:head], dtype=np.float64)
        run[qid] = rerank_order(hits, click, sigmoid(click), config)
    return run


def tune_blend(
    fused: Mapping[str, list[Hit]],
    logits: Mapping[str, Sequence[float] | np.ndarray],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    metric: str = "nDCG@10",
    weights: Sequence[float] = BLEND_WEIGHTS,
    tops: Sequence[int] = RERANK_TOPS,
) -> BlendTuningResult:
    """Score every (weight, top) on cached fused lists and reranker logits; the best wins, ties
    going to the shallower, then the more reranker-weighted setting (cheaper, and the design
    ranks by click probability). ``fused_score`` is the fused order without the reranker."""
    from shopsearch.rerank.blend import BlendConfig

    def score(run: Mapping[str, list[Hit]]) -> float:
        return evaluate(qrels, hits_to_run(run), [metric])[1][metric]

    table = [
        (config, score(blended_run(fused, logits, config)))
        for config in (
            BlendConfig(weight=w, top=t)
            for t in sorted(tops)
            for w in sorted(weights, reverse=True)
        )
    ]
    best, best_score = max(table, key=lambda row: row[1])
    return BlendTuningResult(
        metric=metric, best=best, best_score=best_score, fused_score=score(fused), table=table
    )


def tune_engine_blend(
    engine: SearchEngine,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    metric: str = "nDCG@10",
    weights: Sequence[float] = BLEND_WEIGHTS,
    tops: Sequence[int] = RERANK_TOPS,
    progress: bool = False,
) -> BlendTuningResult:
    """:func:`tune_blend` for an engine's reranker: each query (``{query_id: text}``, all
    judged) gets the engine's own hybrid stage list and one reranker pass over its deepest
    candidates, through the ``Reranker`` interface the rerank stage uses."""
    from tqdm.auto import tqdm

    reranker = engine.reranker
    if reranker is None:
        raise ValueError("the engine has no reranker to tune")
    qids = list(queries)
    deepest = max(tops)
    fused = dict(zip(qids, engine.stage("hybrid").search([queries[q] for q in qids], deepest)))
    logits = {
        q: reranker.logits(
            queries[q], [engine.product_texts[h.product_id] for h in fused[q][:deepest]]
        )
        for q in tqdm(qids, desc="reranking", disable=not progress)
    }
    return tune_blend(
        fused, logits, {q: qrels[q] for q in qids}, metric=metric, weights=weights, tops=tops
    )


def store_blend(index_dir: Path, result: BlendTuningResult, queries: int) -> None:
    """Record the best blend with the index's installed reranker (``manifest.reranker.blend``);
    installing another reranker replaces the record, so a blend never outlives its model."""
    from shopsearch.index.manifest import Manifest
    from shopsearch.index.store import update_manifest

    info = dict(Manifest.read(Path(index_dir)).reranker or {})
    info["blend"] = {
        **result.best.to_dict(),
        "metric": result.metric,
        "score": result.best_score,
        "fused_score": result.fused_score,
        "queries": queries,
    }
    update_manifest(Path(index_dir), reranker=info)


def store_fusion(index_dir: Path, result: TuningResult, queries: int, depth: int) -> None:
    """Record the best fusion setting and the candidate depth it was tuned at in the index
    manifest, where the hybrid stage reads both."""
    from shopsearch.index.store import update_manifest

    update_manifest(
        Path(index_dir),
        candidate_depth=depth,
        fusion={
            **result.best.to_dict(),
            "metric": result.metric,
            "score": result.best_score,
            "queries": queries,
        },
    )


def tune_engine_fusion(
    engine: SearchEngine,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    metric: str = "nDCG@10",
) -> TuningResult:
    """:func:`tune_fusion` over the engine's own BM25 and dense stages, each asked for the
    engine's candidate depth (what its hybrid stage fuses), so the winner is scored on the
    lists it will fuse when served."""
    if "dense" not in engine.stages:
        raise ValueError("this index has no dense part: there is nothing to fuse")
    qids = list(queries)
    texts = [queries[q] for q in qids]
    sparse = dict(zip(qids, engine.stage("bm25").search(texts, engine.depth)))
    dense = dict(zip(qids, engine.stage("dense").search(texts, engine.depth)))
    return tune_fusion(
        sparse,
        dense,
        {q: qrels[q] for q in qids},
        current=engine.fusion,
        metric=metric,
        k=engine.depth,
    )


def held_out_query_ids(reranker_dir: Path, queries: Mapping[str, str]) -> list[str]:
    """The ids of ``queries`` the reranker in ``reranker_dir`` held out of its training (its
    dev and test split, recorded in its ``training.json`` as ids, or as texts for a click
    log), so that its blend is tuned on queries it never trained on."""
    import json

    from shopsearch.errors import SearchError

    info_file = Path(reranker_dir) / "training.json"
    info = json.loads(info_file.read_text("utf-8")) if info_file.is_file() else {}
    if "held_out_queries" not in info:
        raise SearchError(
            f"{info_file} lists no held-out queries (was the reranker trained "
            "by `search-cli train-reranker`?); drop --held-out and give queries "
            "it did not train on"
        )
    keep = set(info["held_out_queries"])
    kept = [q for q in queries if q in keep or queries[q] in keep]
    if not kept:
        raise SearchError(
            "none of the given queries is among the reranker's held-out "
            "queries: give the data set it was trained on"
        )
    return kept
