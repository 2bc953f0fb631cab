"""Blending the reranker's click logits with the fused retrieval score.

A cross-encoder trained on a few thousand queries knows things the first stage does not (it
reads query and title together), and the first stage knows things it does not (exact BM25
matches, a fine-tuned bi-encoder's view of the whole catalogue). The blend

    key = weight * z(click logit) + (1 - weight) * z(fused score)

with both standardised over the reranked candidates of one query, lets the final order use
both; ``weight = 1`` is pure click-probability order, ``0`` the fused order. The weight and
the rerank depth are tuned on judged queries that are not reported on (``search-cli
tune-rerank``) and stored with the installed reranker in the index manifest. The shown click
probability is the reranker's calibrated one either way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from shopsearch.retrieval.types import Hit, sort_hits


@dataclass(frozen=True)
class BlendConfig:
    """``weight`` in [0, 1] on the reranker; ``top`` fused candidates are reranked."""

    weight: float = 1.0
    top: int = 50

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"blend weight must be in [0, 1], got {self.weight}")
        if self.top < 1:
            raise ValueError(f"rerank top must be >= 1, got {self.top}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "BlendConfig":
        data = data or {}
        return cls(weight=float(data.get("weight", 1.0)), top=int(data.get("top", 50)))


def standardise(values: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` over one query's candidates; all zeros when they are all equal."""
    values = np.asarray(values, dtype=np.float64)
    spread = values.std() if values.size else 0.0
    if spread == 0.0:
        return np.zeros_like(values)
    return (values - values.mean()) / spread


def blend_scores(click_logits: np.ndarray, fused_scores: np.ndarray, weight: float) -> np.ndarray:
    """The blended sort key of one query's candidates (see the module docstring)."""
    click_logits = np.asarray(click_logits, dtype=np.float64)
    fused_scores = np.asarray(fused_scores, dtype=np.float64)
    if click_logits.shape != fused_scores.shape:
        raise ValueError(f"{click_logits.shape[0]} logits but {fused_scores.shape[0]} fused scores")
    if weight >= 1.0:
        return click_logits.copy()
    return weight * standardise(click_logits) + (1.0 - weight) * standardise(fused_scores)


def blend_order(hits: list[Hit], click_logits: np.ndarray, fused_scores: np.ndarray,
                weight: float) -> list[Hit]:
    """Reranked candidates in final order. ``hits`` (any order) carry their own score, the
    click probability; ``click_logits`` and ``fused_scores`` are aligned with them. Weight 1
    keeps those scores; below 1 each hit's score becomes its blended key."""
    if weight >= 1.0:
        return sort_hits(hits)
    keys = blend_scores(click_logits, fused_scores, weight)
    return sort_hits([Hit(h.product_id, float(key), h.scores) for h, key in zip(hits, keys)])


def append_below(ranked: list[Hit], tail: list[Hit]) -> list[Hit]:
    """``tail`` after ``ranked``, in its own order, every score below all of ``ranked``'s, so
    that score order and rank order agree (run files are sorted by score)."""
    floor = min([0.0] + [h.score for h in ranked])
    return ranked + [Hit(h.product_id, floor - float(i + 1), h.scores) for i, h in enumerate(tail)]
