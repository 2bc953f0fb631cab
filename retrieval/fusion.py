"""Pure functions that fuse ranked lists from several retrievers into one.

Raw BM25 scores (unbounded, query-dependent) and cosine similarities (in [-1, 1]) live on
different scales, so they are never added directly: either ranks are fused (RRF) or each list's
scores are normalised first (convex combination).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from shopsearch.retrieval.types import Hit, sort_hits


@dataclass(frozen=True)
class FusionConfig:
    """How the hybrid retriever fuses its lists; stored in the index manifest."""

    method: Literal["rrf", "convex"] = "rrf"
    rrf_k: float = 60.0
    weights: tuple[float, ...] = (1.0, 1.0)
    alpha: float = 0.5
    normalization: Literal["minmax", "zscore"] = "minmax"

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "rrf_k": self.rrf_k,
            "weights": list(self.weights),
            "alpha": self.alpha,
            "normalization": self.normalization,
        }

    @classmethod
    def from_dict(cls, data: dict) -> FusionConfig:
        return cls(
            method=data.get("method", "rrf"),
            rrf_k=float(data.get("rrf_k", 60.0)),
            weights=tuple(float(w) for w in data.get("weights", (1.0, 1.0))),
            alpha=float(data.get("alpha", 0.5)),
            normalization=data.get("normalization", "minmax"),
        )


def _merge_scores(ranked_lists: Sequence[list[Hit]], fused: dict[str, float]) -> list[Hit]:
    """Build fused hits that keep every stage's own scores for display."""
    stage_scores: dict[str, dict[str, float]] = {pid: {} for pid in fused}
    for hits in ranked_lists:
        for hit in hits:
            stage_scores[hit.product_id].update(hit.scores)
    return sort_hits(
        [Hit(pid, score, {**stage_scores[pid], "fused": score}) for pid, score in fused.items()]
    )


def reciprocal_rank_fusion(
    ranked_lists: Sequence[list[Hit]], *, k: float = 60.0, weights: Sequence[float] | None = None
) -> list[Hit]:
    """RRF (Cormack et al., 2009): score(d) = sum_i w_i / (k + rank_i(d)), ranks from 1.

    A product missing from a list contributes nothing from it; an empty list contributes
    nothing at all, so fusing with an empty list returns the other list's order.
    """
    weights = list(weights) if weights is not None else [1.0] * len(ranked_lists)
    if len(weights) != len(ranked_lists):
        raise ValueError(f"got {len(weights)} weights for {len(ranked_lists)} ranked lists")
    if k < 0:
        raise ValueError("RRF k must be >= 0")
    fused: dict[str, float] = {}
    for hits, weight in zip(ranked_lists, weights):
        for rank, hit in enumerate(hits, start=1):
            fused[hit.product_id] = fused.get(hit.product_id, 0.0) + weight / (k + rank)
    return _merge_scores(ranked_lists, fused)


def normalize_scores(scores: np.ndarray, method: Literal["minmax", "zscore"]) -> np.ndarray:
    """Min-max to [0, 1] or z-score. Constant scores (including a single hit) map to 1.0 for
    min-max and 0.0 for z-score, since there is no spread to normalise by."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return scores
    if method == "minmax":
        spread = scores.max() - scores.min()
        return np.ones_like(scores) if spread == 0 else (scores - scores.min()) / spread
    if method == "zscore":
        std = scores.std()
        return np.zeros_like(scores) if std == 0 else (scores - scores.mean()) / std
    raise ValueError(f"unknown normalisation {method!r}; use 'minmax' or 'zscore'")


def convex_combination(
    sparse: list[Hit],
    dense: list[Hit],
    *,
    alpha: float = 0.5,
    normalization: Literal["minmax", "zscore"] = "minmax",
) -> list[Hit]:
    """score(d) = alpha * norm(dense)(d) + (1 - alpha) * norm(sparse)(d).

    Each list is normalised on its own candidates. A product absent from one list takes that
    list's lowest normalised value (it ranked below everything retrieved there), which is the
    usual choice (Bruch et al., 2023) and keeps one-sided hits comparable.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must be in [0, 1]")
    normalised: list[dict[str, float]] = []
    floors: list[float] = []
    for hits in (sparse, dense):
        values = normalize_scores(np.array([h.score for h in hits]), normalization)
        normalised.append({h.product_id: float(v) for h, v in zip(hits, values)})
        floors.append(float(values.min()) if len(values) else 0.0)
    ids = set(normalised[0]) | set(normalised[1])
    fused = {
        pid: (1 - alpha) * normalised[0].get(pid, floors[0])
        + alpha * normalised[1].get(pid, floors[1])
        for pid in ids
    }
    return _merge_scores([sparse, dense], fused)


def fuse(sparse: list[Hit], dense: list[Hit], config: FusionConfig) -> list[Hit]:
    if config.method == "rrf":
        return reciprocal_rank_fusion([sparse, dense], k=config.rrf_k, weights=config.weights)
    if config.method == "convex":
        return convex_combination(
            sparse, dense, alpha=config.alpha, normalization=config.normalization
        )
    raise ValueError(f"unknown fusion method {config.method!r}; use 'rrf' or 'convex'")
