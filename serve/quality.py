"""Online quality from the feedback log: click-through, reciprocal rank of clicks, and whether
the served click probabilities are calibrated. Pure functions over plain arrays.

For a served list (a request), with clicks at 1-based positions ``P``:

    CTR@k = share of requests with a click at a position <= k
    MRR   = mean over requests of 1 / min(P)  (0 for a request without a click)

Calibration, after position correction. The reranker's probability ``q`` estimates
``P(click | examined)``: it is trained on inverse-propensity-weighted clicks. Under the
position-based model a product shown at position ``p`` is examined with probability
``theta_p``, so its expected clicks are ``theta_p * q``. Bin the impressions by ``q`` (equal
width, ``bins`` of them); in bin ``b`` the position-corrected click rate is the ratio
estimator ``sum(clicks) / sum(theta_p)`` (unbiased as the bin grows, and without the variance
of per-impression ``1 / theta_p`` weights), and::

    ECE = sum_b (n_b / n) * | mean_b(q) - sum_b(clicks) / sum_b(theta_p) |

A drifting reranker (its probabilities no longer match what shoppers click) shows as a rising
ECE while CTR may still look fine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OnlineQuality:
    requests: int
    impressions: int
    ctr: dict[int, float]
    mrr: float
    ece: float | None
    calibrated_impressions: int

    def to_dict(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "impressions": self.impressions,
            **{f"ctr@{k}": v for k, v in self.ctr.items()},
            "mrr": self.mrr,
            "ece": self.ece,
            "calibrated_impressions": self.calibrated_impressions,
        }


def first_click_positions(
    request_ids: Sequence[str],
    positions: np.ndarray,
    clicked: np.ndarray,
    requests: Sequence[str] = (),
) -> dict[str, int | None]:
    """Each request's highest (smallest) clicked position, or None without a click.
    ``requests`` adds requests with no row (a search that found nothing)."""
    first: dict[str, int | None] = {r: None for r in requests}
    first.update((r, None) for r in request_ids)
    for rid, pos, clk in zip(request_ids, positions.tolist(), clicked.tolist()):
        if clk:
            current = first[rid]
            first[rid] = pos if current is None else min(current, pos)
    return first


def click_through(first: dict[str, int | None], k: int) -> float:
    """CTR@k: the share of requests with a click at position <= k (0 with no requests)."""
    if not first:
        return 0.0
    return sum(1 for p in first.values() if p is not None and p <= k) / len(first)


def mean_reciprocal_rank(first: dict[str, int | None]) -> float:
    if not first:
        return 0.0
    return sum(1.0 / p for p in first.values() if p is not None) / len(first)


def position_corrected_ece(
    probabilities: np.ndarray,
    positions: np.ndarray,
    clicked: np.ndarray,
    propensities: np.ndarray,
    bins: int = 10,
) -> float | None:
    """The module's ECE; None when there is nothing to measure. Positions deeper than the
    propensities given use the last one."""
    q = np.asarray(probabilities, dtype=np.float64)
    if q.size == 0:
        return None
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    theta = np.asarray(propensities, dtype=np.float64)
    if theta.size == 0 or np.any(theta <= 0):
        raise ValueError("propensities must be a non-empty array of positive numbers")
    idx = np.minimum(np.asarray(positions, dtype=np.int64) - 1, theta.size - 1)
    examined = theta[np.maximum(idx, 0)]
    clicks = np.asarray(clicked, dtype=np.float64)
    which = np.minimum((q * bins).astype(np.int64), bins - 1)
    ece = 0.0
    for b in np.unique(which):
        mask = which == b
        observed = clicks[mask].sum() / examined[mask].sum()
        ece += mask.sum() / q.size * abs(q[mask].mean() - observed)
    return float(ece)


def online_quality(
    request_ids: Sequence[str],
    positions: np.ndarray,
    clicked: np.ndarray,
    probabilities: Sequence[float | None],
    propensities: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    requests: Sequence[str] = (),
) -> OnlineQuality:
    """Every figure of the module over one window of impressions (one row per product
    shown; ``requests`` names requests without rows too). Rows without a served probability
    (unreranked stages) count for CTR and MRR only."""
    positions = np.asarray(positions, dtype=np.int64)
    clicked = np.asarray(clicked, dtype=bool)
    first = first_click_positions(request_ids, positions, clicked, requests)
    has_q = np.array([p is not None for p in probabilities], dtype=bool)
    q = np.array([p for p in probabilities if p is not None], dtype=np.float64)
    ece = position_corrected_ece(q, positions[has_q], clicked[has_q], propensities)
    return OnlineQuality(
        requests=len(first),
        impressions=int(positions.size),
        ctr={k: click_through(first, k) for k in ks},
        mrr=mean_reciprocal_rank(first),
        ece=ece,
        calibrated_impressions=int(has_q.sum()),
    )
