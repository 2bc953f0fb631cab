"""End-to-end training recipes that the CLI and the benchmarks call: from a click log or graded
judgements to a fine-tuned, calibrated reranker folder.

Splits are by query (never by impression), so no query seen in training is used to stop,
calibrate or evaluate. What "click probability" means here: the probability that a shopper who
examines the product (as at rank 1) clicks it. Position-weighted training estimates exactly
that; calibration is fitted on held-out queries' debiased click rates and checked on others.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from shopsearch.errors import DataError
from shopsearch.training.clicks import Impression
from shopsearch.training.reranker import (
    PairExample,
    RerankerTrainingConfig,
    build_pairs_from_qrels,
    train_cross_encoder,
)

logger = logging.getLogger(__name__)


def split_queries(
    query_ids: Sequence[str], fractions: tuple[float, float, float] | None = None, seed: int = 0
) -> tuple[set[str], set[str], set[str]]:
    """Seeded split of distinct query ids into train / dev / test sets: 80/10/10, or 60/20/20
    below 200 queries so that dev and test still hold enough queries to calibrate on."""
    ids = sorted(set(query_ids))
    if fractions is None:
        fractions = (0.8, 0.1, 0.1) if len(ids) >= 200 else (0.6, 0.2, 0.2)
    if len(ids) < 3:
        raise DataError(
            f"need at least 3 distinct queries to split into train/dev/test, got {len(ids)}"
        )
    random.Random(seed).shuffle(ids)
    n_dev = max(1, round(len(ids) * fractions[1]))
    n_test = max(1, round(len(ids) * fractions[2]))
    return (set(ids[n_dev + n_test :]), set(ids[:n_dev]), set(ids[n_dev : n_dev + n_test]))


@dataclass
class CalibrationReport:
    method: str
    parameters: dict[str, Any]
    dev_pairs: int
    test_pairs: int
    test_log_loss_before: float
    test_log_loss_after: float
    test_ece_before: float
    test_ece_after: float
    reliability_before: list[dict[str, Any]] = field(default_factory=list)
    reliability_after: list[dict[str, Any]] = field(default_factory=list)


def calibrate(
    model_dir: Path,
    dev: Sequence[PairExample],
    test: Sequence[PairExample],
    *,
    method: str = "platt",
) -> CalibrationReport:
    """Fit a calibrator on ``dev`` pairs, measure log loss and ECE on ``test`` pairs before
    (plain sigmoid) and after, and store it as ``calibration.json`` beside the model.

    The logits come from the saved folder loaded as the engine loads it
    (``CrossEncoderReranker``: same pair length, same scorer), so the calibrator is fitted
    on exactly the scores that are served.
    """
    from shopsearch.rerank.calibration import (
        Calibrator,
        expected_calibration_error,
        fit_platt,
        fit_temperature,
        log_loss,
        reliability_table,
        sigmoid,
        write_calibration,
    )
    from shopsearch.rerank.cross_encoder import CrossEncoderReranker

    if not dev or not test:
        raise DataError("calibration needs held-out dev and test pairs")
    if method not in ("platt", "temperature"):
        raise ValueError(f"unknown calibration {method!r}; use 'platt' or 'temperature'")
    served = CrossEncoderReranker(model_dir, batch_size=64)
    dev_logits = served.pair_logits([(e.query, e.text) for e in dev])
    test_logits = served.pair_logits([(e.query, e.text) for e in test])
    dev_y, dev_w = np.array([e.label for e in dev]), np.array([e.weight for e in dev])
    test_y, test_w = np.array([e.label for e in test]), np.array([e.weight for e in test])
    calibrator: Calibrator = (fit_platt if method == "platt" else fit_temperature)(
        dev_logits, dev_y, dev_w
    )
    before = sigmoid(test_logits)
    after = calibrator.predict_proba(test_logits)
    write_calibration(Path(model_dir), calibrator)
    return CalibrationReport(
        method=method,
        parameters=calibrator.to_dict(),
        dev_pairs=len(dev),
        test_pairs=len(test),
        test_log_loss_before=log_loss(before, test_y, test_w),
        test_log_loss_after=log_loss(after, test_y, test_w),
        test_ece_before=expected_calibration_error(before, test_y),
        test_ece_after=expected_calibration_error(after, test_y),
        reliability_before=reliability_table(before, test_y),
        reliability_after=reliability_table(after, test_y),
    )


def click_pairs(
    impressions: Sequence[Impression],
    product_text: Mapping[str, str],
    propensities: np.ndarray | None,
    *,
    clip: float = 10.0,
) -> list[PairExample]:
    """One pair per (query, product) shown: target = debiased click rate (IPW with
    ``propensities``; the naive click rate when None), weight 1."""
    from shopsearch.training.propensity import ipw_pair_labels

    depth = max((i.position for i in impressions), default=1)
    theta = propensities if propensities is not None else np.ones(depth)
    rows = ipw_pair_labels(impressions, theta, clip=clip)
    missing = sorted({pid for _, pid, _, _ in rows if pid not in product_text})
    if missing:
        raise DataError(
            f"{len(missing)} clicked/shown product ids are not in the catalogue "
            f"(e.g. {missing[:3]}); was the log made on another catalogue?",
            field="product_id",
        )
    # Every pair weighs 1: its impressions already shaped the target, and weighting by
    # impression count would let a few head queries drown the sampled negatives.
    return [PairExample(q, product_text[pid], target, 1.0) for q, pid, target, _ in rows]


def sampled_negatives(
    queries: Sequence[str],
    product_ids: Sequence[str],
    product_text: Mapping[str, str],
    shown: Mapping[str, set[str]],
    per_query: int,
    seed: int,
) -> list[PairExample]:
    """Random catalogue products never shown for the query, as label-0 pairs: they teach the
    model what an obviously wrong product looks like, which impressions alone rarely show."""
    rng = random.Random(seed)
    pool = list(product_ids)
    pairs = []
    for query in sorted(set(queries)):
        seen = shown.get(query, set())
        drawn = rng.sample(pool, min(len(pool), per_query + len(seen)))
        pairs += [
            PairExample(query, product_text[pid], 0.0, 1.0)
            for pid in [p for p in drawn if p not in seen][:per_query]
        ]
    return pairs


def sample_ranked_negatives(
    ranked: Sequence[str], judged: Mapping[str, int], n: int, rng: random.Random, head: int = 30
) -> list[str]:
    """``n`` unjudged products from a ranking: two thirds drawn from its first ``head`` ranks,
    the rest from below, topped up from either side when one runs short.

    Why sampled, not the top ``n``: the very top unjudged products are often relevant but
    unjudged (false negatives); sampling across the head keeps most negatives hard without
    teaching the model that the best matches are wrong, and the deeper ones keep it honest on
    the easier candidates it will also see.
    """
    unjudged = [p for p in ranked if p not in judged]
    top, rest = unjudged[:head], unjudged[head:]
    n_top = min(len(top), -(-2 * n // 3))
    picked = rng.sample(top, n_top)
    picked += rng.sample(rest, min(len(rest), n - n_top))
    if len(picked) < n:
        left = [p for p in top if p not in set(picked)]
        picked += rng.sample(left, min(len(left), n - len(picked)))
    return picked


@dataclass
class RerankerRecipeResult:
    model_dir: Path
    propensities: list[float] | None
    train_pairs: int
    history: list[dict[str, Any]]
    best_epoch: int
    calibration: CalibrationReport
    split: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["model_dir"] = str(self.model_dir)
        return data


def train_reranker_from_clicks(
    impressions: Sequence[Impression],
    product_text: Mapping[str, str],
    base_model: str,
    out_dir: Path,
    *,
    config: RerankerTrainingConfig = RerankerTrainingConfig(),
    position_weighting: bool = True,
    propensities: np.ndarray | None = None,
    negatives_per_query: int = 5,
    calibration: str = "platt",
    seed: int = 0,
    max_position: int | None = None,
) -> RerankerRecipeResult:
    """Fine-tune a cross-encoder on a click log, with inverse-propensity weighting by position
    (propensities estimated by EM from the log unless given), then calibrate it."""
    from shopsearch.training.propensity import estimate_propensities_em

    if not impressions:
        raise DataError("the click log is empty")
    train_q, dev_q, test_q = split_queries([i.query for i in impressions], seed=seed)
    if position_weighting and propensities is None:
        # Default: every rank the log shows, at most 10 (deeper ranks are rarely examined
        # often enough to estimate).
        deepest = max_position or min(10, max(i.position for i in impressions))
        propensities = estimate_propensities_em(impressions, max_position=deepest)
        logger.info("estimated propensities: %s", np.round(propensities, 3).tolist())
    theta = propensities if position_weighting else None

    def pairs_for(queries: set[str]) -> list[PairExample]:
        return click_pairs([i for i in impressions if i.query in queries], product_text, theta)

    train, dev, test = pairs_for(train_q), pairs_for(dev_q), pairs_for(test_q)
    shown: dict[str, set[str]] = {}
    for imp in impressions:
        shown.setdefault(imp.query, set()).add(imp.product_id)
    train += sampled_negatives(
        sorted(train_q), sorted(product_text), product_text, shown, negatives_per_query, seed
    )
    result = train_cross_encoder(base_model, train, dev, out_dir, config, overwrite=True)
    report = calibrate(out_dir, dev, test, method=calibration)
    _record_recipe(
        out_dir,
        {
            "trained_on": "click log",
            "position_weighting": position_weighting,
            "propensities": None if theta is None else [float(x) for x in theta],
            "base_model": base_model,
            "held_out_queries": sorted(dev_q | test_q),
        },
    )
    return RerankerRecipeResult(
        out_dir,
        None if theta is None else [float(x) for x in theta],
        len(train),
        result.history,
        result.best_epoch,
        report,
        {"train": len(train_q), "dev": len(dev_q), "test": len(test_q)},
    )


def train_reranker_from_qrels(
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    product_text: Mapping[str, str],
    base_model: str,
    out_dir: Path,
    *,
    mine_negatives: Callable[[list[str]], list[list[str]]] | None = None,
    negatives_per_query: int = 5,
    config: RerankerTrainingConfig = RerankerTrainingConfig(),
    calibration: str = "platt",
    seed: int = 0,
    max_grade: int = 2,
) -> RerankerRecipeResult:
    """Fine-tune on graded judgements (label = grade / max_grade); ``mine_negatives`` (ideally
    the ranking the reranker will rerank, e.g. hybrid) returns ranked product ids per query
    text, and unjudged ones among them become label-0 pairs — hard negatives the model must
    learn to push down (see :func:`sample_ranked_negatives` for which)."""
    judged = [q for q in qrels if q in queries]
    train_q, dev_q, test_q = split_queries(judged, seed=seed)
    negatives: dict[str, list[str]] = {}
    if mine_negatives is not None and negatives_per_query > 0:
        ordered = sorted(judged)
        rng = random.Random(seed)
        for qid, ranked in zip(ordered, mine_negatives([queries[q] for q in ordered])):
            negatives[qid] = sample_ranked_negatives(ranked, qrels[qid], negatives_per_query, rng)

    def pairs_for(ids: set[str]) -> list[PairExample]:
        subset = {q: qrels[q] for q in sorted(ids)}
        return build_pairs_from_qrels(
            queries,
            subset,
            product_text,
            negatives=negatives,
            max_grade=max_grade,
            skip_missing=True,
        )

    train, dev, test = pairs_for(train_q), pairs_for(dev_q), pairs_for(test_q)
    result = train_cross_encoder(base_model, train, dev, out_dir, config, overwrite=True)
    report = calibrate(out_dir, dev, test, method=calibration)
    _record_recipe(
        out_dir,
        {
            "trained_on": "graded judgements",
            "base_model": base_model,
            "held_out_queries": sorted(dev_q | test_q),
        },
    )
    return RerankerRecipeResult(
        out_dir,
        None,
        len(train),
        result.history,
        result.best_epoch,
        report,
        {"train": len(train_q), "dev": len(dev_q), "test": len(test_q)},
    )


def _record_recipe(out_dir: Path, info: dict[str, Any]) -> None:
    """Merge what the recipe knows into the model folder's training.json. ``held_out_queries``
    (dev and test ids, or texts for a click log) lets ``tune-rerank --held-out`` tune on
    queries the model never trained on."""
    path = Path(out_dir) / "training.json"
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    data.update(info)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def simulate_click_log(
    rankings: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Mapping[str, int]],
    queries: Mapping[str, str],
    *,
    sessions_per_query: int = 20,
    depth: int = 10,
    eta: float = 1.0,
    shuffled_fraction: float = 0.2,
    seed: int = 0,
) -> list[Impression]:
    """A click log under the position-based model, where ``shuffled_fraction`` of the sessions
    show the top ``depth`` in random order (as a small online experiment would). Without some
    products seen at several ranks, position bias cannot be estimated from the log."""
    from shopsearch.training.simulate import simulate_clicks

    if not 0.0 <= shuffled_fraction <= 1.0:
        raise ValueError("shuffled_fraction must be in [0, 1]")
    n_shuffled = round(sessions_per_query * shuffled_fraction)
    common: dict[str, Any] = dict(queries=queries, depth=depth, eta=eta)
    log = (
        simulate_clicks(
            rankings, qrels, sessions_per_query=sessions_per_query - n_shuffled, seed=seed, **common
        )
        if sessions_per_query > n_shuffled
        else []
    )
    if n_shuffled:
        shuffled = simulate_clicks(
            rankings,
            qrels,
            sessions_per_query=n_shuffled,
            seed=seed + 1,
            shuffle_top=depth,
            **common,
        )
        log += [replace(i, session_id=f"{i.session_id}-shuffled") for i in shuffled]
    return log


def _mrr_at_10(
    model: Any,
    queries: Mapping[str, str],
    positives: Mapping[str, set[str]],
    corpus_ids: list[str],
    corpus_texts: list[str],
) -> float:
    """MRR@10 (``benchmarks.metrics``) of exact search over a sampled corpus, with the
    model's own prompts."""
    import torch

    from shopsearch.benchmarks.metrics import evaluate

    qids = list(queries)
    prompts = getattr(model, "prompts", {}) or {}
    with torch.inference_mode():
        docs = model.encode(
            corpus_texts,
            prompt=prompts.get("document", ""),
            batch_size=128,
            normalize_embeddings=True,
            convert_to_numpy=True,
        )
        qs = model.encode(
            [queries[q] for q in qids],
            prompt=prompts.get("query", ""),
            batch_size=128,
            normalize_embeddings=True,
            convert_to_numpy=True,
        )
    scores = qs @ docs.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    run = {q: {corpus_ids[c]: float(scores[i, c]) for c in top[i]} for i, q in enumerate(qids)}
    qrels = {q: {pid: 1 for pid in positives[q]} for q in qids}
    return evaluate(qrels, run, ["MRR@10"])[1]["MRR@10"]


def train_retriever(
    engine: Any,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    base_model: str,
    out_dir: Path,
    *,
    epochs: int = 1,
    batch_size: int = 64,
    learning_rate: float = 2e-5,
    hard_negatives: int = 1,
    max_length: int = 64,
    seed: int = 0,
    dev_corpus_size: int = 5000,
    rebuild_index: Path | None = None,
) -> dict[str, Any]:
    """DPR-style fine-tuning of the shared two towers: positives are products with grade >= 1
    (or clicked), negatives are the rest of the batch plus BM25-mined hard negatives (ranks
    4-50, never a known positive). Dev MRR@10 over the dev queries' positives plus a random
    sample of the catalogue picks the best epoch. Optionally rebuilds the index's dense part."""
    from shopsearch.models.registry import resolve_model
    from shopsearch.training.retriever import (
        BiEncoderTrainingConfig,
        build_bi_encoder_examples,
        mine_hard_negatives,
        train_bi_encoder,
    )

    products = engine.index.products
    product_text = {p.id: p.text() for p in products}
    positives = {
        q: {pid for pid, g in judged.items() if g >= 1 and pid in product_text}
        for q, judged in qrels.items()
        if q in queries
    }
    positives = {q: pids for q, pids in positives.items() if pids}
    train_q, dev_q, test_q = split_queries(list(positives), fractions=(0.9, 0.1, 0.0), seed=seed)
    train_q |= test_q

    def bm25_ids(texts: list[str], k: int) -> list[list[str]]:
        return [[h.product_id for h in hits] for hits in engine.stage("bm25").search(texts, k)]

    train_pos = {q: positives[q] for q in sorted(train_q)}
    negatives = (
        mine_hard_negatives(queries, train_pos, bm25_ids, per_query=hard_negatives, rng_seed=seed)
        if hard_negatives
        else {}
    )
    train = build_bi_encoder_examples(
        queries, {q: sorted(p) for q, p in train_pos.items()}, product_text, negatives
    )
    dev_ids = sorted(dev_q)
    rng = random.Random(seed)
    sample = set(rng.sample([p.id for p in products], min(dev_corpus_size, len(products))))
    sample |= {pid for q in dev_ids for pid in positives[q]}
    corpus_ids = sorted(sample)
    corpus_texts = [product_text[pid] for pid in corpus_ids]

    def dev_eval(model: Any) -> dict[str, float]:
        return {
            "dev_mrr@10": _mrr_at_10(
                model,
                {q: queries[q] for q in dev_ids},
                {q: positives[q] for q in dev_ids},
                corpus_ids,
                corpus_texts,
            )
        }

    base = str(resolve_model(base_model).path or base_model)
    config = BiEncoderTrainingConfig(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        max_length=max_length,
        seed=seed,
        hard_negatives_per_query=hard_negatives,
    )
    result = train_bi_encoder(
        base,
        train,
        None,
        Path(out_dir),
        config,
        dev_eval=dev_eval,
        dev_metric="dev_mrr@10",
        overwrite=True,
    )
    _record_recipe(
        Path(out_dir),
        {
            "trained_on": "judgements or clicks",
            "base_model": base_model,
            "train_queries": len(train_q),
            "dev_queries": len(dev_ids),
            "train_examples": len(train),
        },
    )
    summary: dict[str, Any] = {
        "model_dir": str(Path(out_dir).resolve()),
        "history": result.history,
        "best_epoch": result.best_epoch,
        "train_examples": len(train),
        "dev_queries": len(dev_ids),
    }
    if rebuild_index is not None:
        summary["rebuild"] = rebuild_dense(engine, Path(out_dir).resolve(), rebuild_index)
    return summary


def rebuild_dense(engine: Any, model_dir: Path, index_dir: Path) -> dict[str, Any]:
    """Rebuild an index with a new bi-encoder, keeping its catalogue, FAISS factory, fusion
    setting, candidate depth and reranker with its tuned blend (atomically, like any build)."""
    from shopsearch.index.store import build_index
    from shopsearch.retrieval.encoders import SentenceTransformerEncoder
    from shopsearch.retrieval.fusion import FusionConfig

    manifest = engine.index.manifest
    reranker_path = engine.index.reranker_path
    summary = build_index(
        engine.index.products,
        index_dir,
        encoder=SentenceTransformerEncoder(str(model_dir)),
        factory=(manifest.faiss or {}).get("factory"),
        fusion=FusionConfig.from_dict(manifest.fusion),
        candidate_depth=manifest.candidate_depth,
        copy_reranker_from=reranker_path,
        reranker_record=manifest.reranker if reranker_path else None,
        source=manifest.catalog_source,
        show_progress=True,
    )
    return summary.to_dict()
