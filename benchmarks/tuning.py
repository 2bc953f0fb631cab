"""Choosing the fusion setting from judged queries, by grid search over fused runs.

Both retrievers run once per query; every candidate setting then only re-fuses the cached
lists, so a 50-point grid costs seconds, not 50 retrieval passes. Tune on queries you do not
report on (e.g. a slice of the training queries) or the reported number is optimistic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from shopsearch.benchmarks.metrics import evaluate, hits_to_run
from shopsearch.retrieval.fusion import FusionConfig, fuse
from shopsearch.retrieval.types import Hit

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
