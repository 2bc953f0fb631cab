"""The rerank step's order: the reranker's click logits blended with the fused score.

A cross-encoder trained on a few thousand queries knows things the first stage does not (it
reads query and title together), and the first stage knows things it does not (exact BM25
matches, a fine-tuned bi-encoder's view of the whole catalogue). Over the ``top`` reranked
candidates of one query the sort key is

    key = weight * z(click logit) + (1 - weight) * z(fused score)

with both standardised (z-scored) over those candidates; ``weight = 1`` is pure
click-probability order, ``0`` the fused order. The candidates below ``top`` are not scored
by the reranker: they keep their fused order, and their key continues the head's fused term
downwards, ``min(head keys) - (z(lowest head fused score) - z(their fused score))``, strictly
below every reranked candidate, so that the key order is the served order (run files and
trec_eval sort by score). The weight and depth are tuned on judged queries that are not
reported on (``search-cli tune-rerank``) and stored with the installed reranker in the index
manifest. The probability a shopper is shown is the reranker's calibrated one either way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from shopsearch.retrieval.types import Hit, sort_hits

DEFAULT_RERANK_TOP = 50


@dataclass(frozen=True)
class BlendConfig:
    """``weight`` in [0, 1] on the reranker; the ``top`` fused candidates are reranked."""

    weight: float = 1.0
    top: int = DEFAULT_RERANK_TOP

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"blend weight must be in [0, 1], got {self.weight}")
        if self.top < 1:
            raise ValueError(f"rerank top must be >= 1, got {self.top}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> BlendConfig:
        data = data or {}
        return cls(
            weight=float(data.get("weight", 1.0)), top=int(data.get("top", DEFAULT_RERANK_TOP))
        )


def standardise(values: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` over one query's candidates; all zeros when they are all equal."""
    values = np.asarray(values, dtype=np.float64)
    spread = values.std() if values.size else 0.0
    if spread == 0.0:
        return np.zeros_like(values)
    return (values - values.mean()) / spread


def blend_scores(click_logits: np.ndarray, fused_scores: np.ndarray, weight: float) -> np.ndarray:
    """The blended sort key of one query's reranked candidates (see the module docstring)."""
    click_logits = np.asarray(click_logits, dtype=np.float64)
    fused_scores = np.asarray(fused_scores, dtype=np.float64)
    if click_logits.shape != fused_scores.shape:
        raise ValueError(f"{click_logits.shape[0]} logits but {fused_scores.shape[0]} fused scores")
    return weight * standardise(click_logits) + (1.0 - weight) * standardise(fused_scores)


def tail_keys(head_keys: np.ndarray, head_fused: np.ndarray, tail_fused: np.ndarray) -> np.ndarray:
    """Keys of the candidates below the rerank cut: the head's fused term continued down
    (in units of the head's fused-score spread), each strictly below every head key."""
    head_fused = np.asarray(head_fused, dtype=np.float64)
    tail_fused = np.asarray(tail_fused, dtype=np.float64)
    if tail_fused.size == 0:
        return np.zeros(0, dtype=np.float64)
    spread = head_fused.std() if head_fused.size > 1 else 0.0
    gap = (head_fused.min() - tail_fused) / (spread if spread > 0 else 1.0)
    floor = float(np.min(head_keys))
    return np.minimum(floor - np.maximum(gap, 0.0), np.nextafter(floor, -np.inf))


def rerank_order(
    candidates: Sequence[Hit], logits: np.ndarray, probabilities: np.ndarray, config: BlendConfig
) -> list[Hit]:
    """One query's first-stage ``candidates`` (best first, scores = fused score) in final
    order. ``logits`` and ``probabilities`` cover the first ``min(config.top, n)`` of them.
    Each reranked hit keeps its scores and gains "click_logit" and "click_probability"; every
    hit's ``score`` becomes its sort key."""
    head, tail = list(candidates[: config.top]), list(candidates[config.top :])
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if logits.shape[0] != len(head) or probabilities.shape[0] != len(head):
        raise ValueError(
            f"{len(head)} candidates to rerank but {logits.shape[0]} logits and "
            f"{probabilities.shape[0]} probabilities"
        )
    if not head:
        return []
    fused = np.array([h.score for h in head], dtype=np.float64)
    keys = blend_scores(logits, fused, config.weight)
    ranked = sort_hits(
        [
            Hit(
                h.product_id,
                float(key),
                {**h.scores, "click_logit": float(x), "click_probability": float(p)},
            )
            for h, key, x, p in zip(head, keys, logits, probabilities)
        ]
    )
    below = tail_keys(keys, fused, np.array([h.score for h in tail], dtype=np.float64))
    return ranked + [Hit(h.product_id, float(key), h.scores) for h, key in zip(tail, below)]
