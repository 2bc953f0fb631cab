"""Choosing the fusion setting, and the reranker's blend, from judged queries by grid search.

Both retrievers run once per query; every candidate setting then only re-fuses the cached
lists, so a 50-point grid costs seconds, not 50 retrieval passes. Tune on queries you do not
report on (e.g. a slice of the training queries) or the reported number is optimistic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from shopsearch.benchmarks.metrics import evaluate, hits_to_run
from shopsearch.retrieval.fusion import FusionConfig, fuse
from shopsearch.retrieval.types import Hit

if TYPE_CHECKING:
    from shopsearch.rerank.blend import BlendConfig

RRF_KS = (5.0, 10.0, 20.0, 40.0, 60.0, 100.0)
DENSE_WEIGHTS = (0.25, 0.5, 1.0, 2.0, 4.0)
ALPHAS = tuple(round(a * 0.1, 1) for a in range(11))


def default_grid() -> list[FusionConfig]:
    grid = [FusionConfig(method="rrf", rrf_k=k, weights=(1.0, w))
            for k in RRF_KS for w in DENSE_WEIGHTS]
    grid += [FusionConfig(method="convex", alpha=a, normalization=n)
             for n in ("minmax", "zscore") for a in ALPHAS]
    return grid


@dataclass
class TuningResult:
    metric: str
    best: FusionConfig
    best_score: float
    current: FusionConfig
    current_score: float
    table: list[tuple[FusionConfig, float]] = field(default_factory=list)


def score_fusion(config: FusionConfig, sparse: Mapping[str, list[Hit]],
                 dense: Mapping[str, list[Hit]], qrels: Mapping[str, Mapping[str, int]],
                 metric: str, k: int) -> float:
    fused = {qid: fuse(sparse.get(qid, []), dense.get(qid, []), config)[:k] for qid in qrels}
    return evaluate(qrels, hits_to_run(fused), [metric])[1][metric]


def tune_fusion(sparse: Mapping[str, list[Hit]], dense: Mapping[str, list[Hit]],
                qrels: Mapping[str, Mapping[str, int]], *, current: FusionConfig,
                metric: str = "nDCG@10", k: int = 100,
                grid: Sequence[FusionConfig] | None = None) -> TuningResult:
    """Score every setting in ``grid`` on the cached per-query lists; the best wins, ties going
    to the earlier (simpler) setting. ``current`` is scored too, for the before/after line."""
    table = [(config, score_fusion(config, sparse, dense, qrels, metric, k))
             for config in (grid or default_grid())]
    best, best_score = max(table, key=lambda row: row[1])
    return TuningResult(metric=metric, best=best, best_score=best_score, current=current,
                        current_score=score_fusion(current, sparse, dense, qrels, metric, k),
                        table=table)


# --------------------------------------------------------------------------------------------
# Reranker blend: how much of the final order the click logit decides, and how deep it reaches

BLEND_WEIGHTS = tuple(round(w * 0.1, 1) for w in range(11))
RERANK_TOPS = (10, 20, 30, 50)


@dataclass
class BlendTuningResult:
    metric: str
    best: "BlendConfig"
    best_score: float
    fused_score: float
    table: list[tuple["BlendConfig", float]] = field(default_factory=list)


def blended_run(fused: Mapping[str, list[Hit]], logits: Mapping[str, Sequence[float]],
                config: "BlendConfig") -> dict[str, list[Hit]]:
    """Each query's fused list with its top ``config.top`` reordered by the blended key and the
    rest below, as the engine does. ``logits[qid]`` covers at least that many hits."""
    from shopsearch.rerank.blend import append_below, blend_order

    run = {}
    for qid, hits in fused.items():
        head, tail = hits[:config.top], hits[config.top:]
        click = np.asarray(logits[qid][:len(head)], dtype=np.float64)
        # At weight 1 the order is the logit's (the engine shows the calibrated probability,
        # a monotone map of it, which orders the same).
        ranked = blend_order([Hit(h.product_id, float(x), h.scores) for h, x in zip(head, click)],
                             click, np.array([h.score for h in head]), config.weight)
        run[qid] = append_below(ranked, tail)
    return run


def tune_blend(fused: Mapping[str, list[Hit]], logits: Mapping[str, Sequence[float]],
               qrels: Mapping[str, Mapping[str, int]], *, metric: str = "nDCG@10",
               weights: Sequence[float] = BLEND_WEIGHTS,
               tops: Sequence[int] = RERANK_TOPS) -> BlendTuningResult:
    """Score every (weight, top) on cached fused lists and reranker logits; the best wins, ties
    going to the shallower, then the more reranker-weighted setting (cheaper, and the design
    ranks by click probability). ``fused_score`` is the fused order without the reranker."""
    from shopsearch.rerank.blend import BlendConfig

    def score(run: Mapping[str, list[Hit]]) -> float:
        return evaluate(qrels, hits_to_run(run), [metric])[1][metric]

    table = [(config, score(blended_run(fused, logits, config)))
             for config in (BlendConfig(weight=w, top=t) for t in sorted(tops)
                            for w in sorted(weights, reverse=True))]
    best, best_score = max(table, key=lambda row: row[1])
    return BlendTuningResult(metric=metric, best=best, best_score=best_score,
                             fused_score=score(fused), table=table)


def tune_engine_blend(engine: Any, queries: Mapping[str, str],
                      qrels: Mapping[str, Mapping[str, int]], *, metric: str = "nDCG@10",
                      weights: Sequence[float] = BLEND_WEIGHTS,
                      tops: Sequence[int] = RERANK_TOPS,
                      progress: bool = False) -> BlendTuningResult:
    """:func:`tune_blend` for an engine's reranker: each query (``{query_id: text}``, all
    judged) gets its hybrid list and one cross-encoder pass over its deepest candidates."""
    from tqdm.auto import tqdm

    if engine.reranker is None:
        raise ValueError("the engine has no reranker to tune")
    qids = list(queries)
    deepest = max(tops)
    fused = dict(zip(qids, engine.hybrid_search([queries[q] for q in qids], max(100, deepest))))
    logits = {q: engine.reranker.predict_logits(
                  queries[q], [engine.product_text(h.product_id) for h in fused[q][:deepest]])
              for q in tqdm(qids, desc="reranking", disable=not progress)}
    return tune_blend(fused, logits, {q: qrels[q] for q in qids}, metric=metric,
                      weights=weights, tops=tops)


def store_blend(index_dir: Path, result: BlendTuningResult, queries: int) -> None:
    """Record the best blend with the index's installed reranker (``manifest.reranker.blend``);
    installing another reranker replaces the record, so a blend never outlives its model."""
    from shopsearch.index.manifest import Manifest
    from shopsearch.index.store import update_manifest

    info = dict(Manifest.read(Path(index_dir)).reranker or {})
    info["blend"] = {**result.best.to_dict(), "metric": result.metric, "score": result.best_score,
                     "fused_score": result.fused_score, "queries": queries}
    update_manifest(Path(index_dir), reranker=info)
