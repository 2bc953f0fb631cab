"""Calibrate reranker logits into click probabilities, and measure calibration.

Two one-dimensional calibrators, both fitted by minimising the (optionally weighted) log loss on
held-out data and both monotone, so they never change a ranking:

- temperature scaling (Guo et al. 2017): ``p = sigmoid(z / T)``, one parameter ``T > 0``;
- Platt scaling (Platt 1999): ``p = sigmoid(a z + b)``, a slope and an offset.

Labels may be hard (0/1 clicks) or soft (debiased click rates in [0, 1]). A calibrator is saved as
a small JSON-serialisable dict next to the model (``to_dict`` / ``load_calibrator``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from shopsearch.errors import DataError

logger = logging.getLogger(__name__)

ArrayLike = np.ndarray | Sequence[float]

# Probabilities are clipped to [eps, 1 - eps] before taking logs, like sklearn's log_loss.
_EPS = float(np.finfo(np.float64).eps)
# Search range for log T: T in [1e-3, 1e3] covers any sensible reranker.
_LOG_T_BOUNDS = (-3.0 * np.log(10.0), 3.0 * np.log(10.0))


class Calibrator(Protocol):
    """Turns logits ``(n,)`` into probabilities ``(n,)``; serialisable as a plain dict."""

    def predict_proba(self, logits: ArrayLike) -> np.ndarray: ...

    def to_dict(self) -> dict[str, Any]: ...


CALIBRATION_FILE = "calibration.json"


def sigmoid(x: ArrayLike) -> np.ndarray:
    """The logistic function, float64; the plain (uncalibrated) logit-to-probability map."""
    # Two-branch form so that neither exp() overflows.
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x, dtype=np.float64)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def _as_1d(values: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinity")
    return arr


def _check_xy(
    x: ArrayLike, labels: ArrayLike, weights: ArrayLike | None, x_name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs = _as_1d(x, x_name)
    y = _as_1d(labels, "labels")
    if xs.shape != y.shape or xs.size == 0:
        raise ValueError(
            f"{x_name} and labels must be non-empty and of one length, got {xs.shape} and {y.shape}"
        )
    if np.any((y < 0) | (y > 1)):
        raise ValueError("labels must lie in [0, 1]")
    if weights is None:
        w = np.ones_like(xs)
    else:
        w = _as_1d(weights, "weights")
        if w.shape != xs.shape:
            raise ValueError(f"weights must have shape {xs.shape}, got {w.shape}")
        if np.any(w < 0) or w.sum() <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
    return xs, y, w


def bce_with_logits(logits: ArrayLike, labels: ArrayLike) -> np.ndarray:
    """Per-example binary cross-entropy of ``sigmoid(logit)`` against (soft) ``labels``, in
    nats, computed from the logit so that it never overflows: ``softplus(u) - y * u``."""
    u = np.asarray(logits, dtype=np.float64)
    return np.logaddexp(0.0, u) - np.asarray(labels, dtype=np.float64) * u


def _nll_and_grad(u: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray]:
    """Weighted mean BCE of ``sigmoid(u)`` against ``y``, and its derivative w.r.t. ``u``."""
    wsum = w.sum()
    return float(np.dot(w, bce_with_logits(u, y)) / wsum), w * (sigmoid(u) - y) / wsum


@dataclass(frozen=True)
class TemperatureScaler:
    """``p = sigmoid(z / temperature)``."""

    temperature: float

    def predict_proba(self, logits: ArrayLike) -> np.ndarray:
        return sigmoid(_as_1d(logits, "logits") / self.temperature)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "temperature", "temperature": float(self.temperature)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TemperatureScaler:
        _check_type(data, "temperature")
        t = _number(data, "temperature")
        if t <= 0:
            raise DataError(f"must be positive, got {t}", field="temperature")
        return cls(temperature=t)


@dataclass(frozen=True)
class PlattScaler:
    """``p = sigmoid(a * z + b)``."""

    a: float
    b: float

    def predict_proba(self, logits: ArrayLike) -> np.ndarray:
        return sigmoid(self.a * _as_1d(logits, "logits") + self.b)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "platt", "a": float(self.a), "b": float(self.b)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlattScaler:
        _check_type(data, "platt")
        return cls(a=_number(data, "a"), b=_number(data, "b"))


def _check_type(data: Any, expected: str) -> None:
    if not isinstance(data, dict):
        raise DataError(f"calibrator must be a JSON object, got {type(data).__name__}")
    if data.get("type") != expected:
        raise DataError(f"expected {expected!r}, got {data.get('type')!r}", field="type")


def _number(data: dict[str, Any], key: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise DataError(f"must be a finite number, got {value!r}", field=key)
    return float(value)


_CALIBRATORS: dict[str, Any] = {"temperature": TemperatureScaler, "platt": PlattScaler}


def read_calibration(model_dir: Path) -> TemperatureScaler | PlattScaler | None:
    """The calibrator stored beside a model (``calibration.json``), or None if it has none."""
    path = Path(model_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"not valid JSON ({exc})", path=str(path)) from None
    try:
        return load_calibrator(data)
    except DataError as exc:
        raise DataError(str(exc), path=str(path)) from None


def write_calibration(model_dir: Path, calibrator: Calibrator) -> Path:
    path = Path(model_dir) / CALIBRATION_FILE
    path.write_text(json.dumps(calibrator.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path


def load_calibrator(data: dict[str, Any]) -> TemperatureScaler | PlattScaler:
    """Rebuild a calibrator from its ``to_dict()`` form, choosing the class by ``data["type"]``."""
    if not isinstance(data, dict):
        raise DataError(f"calibrator must be a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    if kind not in _CALIBRATORS:
        raise DataError(
            f"unknown calibrator type {kind!r}; expected one of {sorted(_CALIBRATORS)}",
            field="type",
        )
    return _CALIBRATORS[kind].from_dict(data)


def fit_temperature(
    logits: ArrayLike, labels: ArrayLike, weights: ArrayLike | None = None
) -> TemperatureScaler:
    """Fit ``T`` by minimising the weighted mean log loss of ``sigmoid(z / T)``.

    Optimises ``log T`` over ``[1e-3, 1e3]`` with a bounded scalar search: the loss is convex in
    ``1 / T`` (a logistic regression without intercept), hence unimodal in ``log T``.
    """
    from scipy.optimize import minimize_scalar

    z, y, w = _check_xy(logits, labels, weights, "logits")

    def objective(log_t: float) -> float:
        return _nll_and_grad(z * np.exp(-log_t), y, w)[0]

    res = minimize_scalar(
        objective, bounds=_LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-8}
    )
    log_t = float(res.x)
    if min(abs(log_t - b) for b in _LOG_T_BOUNDS) < 1e-3:
        logger.warning(
            "fitted temperature %.3g sits at the search bound; are the logits "
            "related to the labels at all?",
            np.exp(log_t),
        )
    return TemperatureScaler(temperature=float(np.exp(log_t)))


def fit_platt(
    logits: ArrayLike, labels: ArrayLike, weights: ArrayLike | None = None
) -> PlattScaler:
    """Fit ``a, b`` by minimising the weighted mean log loss of ``sigmoid(a z + b)`` (L-BFGS).

    Plain maximum likelihood, without Platt's target smoothing: on perfectly separable data the
    slope grows until the optimiser stops, so fit on a held-out set of reasonable size.
    """
    from scipy.optimize import minimize

    z, y, w = _check_xy(logits, labels, weights, "logits")

    def objective(params: np.ndarray) -> tuple[float, np.ndarray]:
        a, b = params
        loss, du = _nll_and_grad(a * z + b, y, w)
        return loss, np.array([np.dot(du, z), du.sum()])

    res = minimize(objective, x0=np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    if not res.success:
        logger.warning("Platt scaling did not converge: %s", res.message)
    return PlattScaler(a=float(res.x[0]), b=float(res.x[1]))


def log_loss(probs: ArrayLike, labels: ArrayLike, weights: ArrayLike | None = None) -> float:
    """Weighted mean of ``-[y log p + (1 - y) log(1 - p)]`` (natural log).

    ``p`` is clipped to ``[eps, 1 - eps]`` with float64 machine epsilon, as
    ``sklearn.metrics.log_loss`` does; labels may be soft.
    """
    p, y, w = _check_xy(probs, labels, weights, "probs")
    _check_probs(p)
    p = np.clip(p, _EPS, 1.0 - _EPS)
    loss = -(y * np.log(p) + (1.0 - y) * np.log1p(-p))
    return float(np.dot(w, loss) / w.sum())


def brier_score(probs: ArrayLike, labels: ArrayLike, weights: ArrayLike | None = None) -> float:
    """Weighted mean of ``(p - y) ** 2``."""
    p, y, w = _check_xy(probs, labels, weights, "probs")
    _check_probs(p)
    return float(np.dot(w, (p - y) ** 2) / w.sum())


def _check_probs(p: np.ndarray) -> None:
    if np.any((p < 0) | (p > 1)):
        raise ValueError("probs must lie in [0, 1]; pass probabilities, not logits")


def _bin_index(p: np.ndarray, n_bins: int, strategy: str) -> tuple[np.ndarray, np.ndarray]:
    """Bin id per probability and the ``n_bins + 1`` bin edges."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        # floor(p * n) puts p in [i/n, (i+1)/n); p == 1 joins the last bin.
        idx = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    elif strategy == "quantile":
        edges = np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1))
        edges[0], edges[-1] = 0.0, 1.0
        idx = np.clip(np.searchsorted(edges[1:-1], p, side="right"), 0, n_bins - 1)
    else:
        raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")
    return idx, edges


def expected_calibration_error(
    probs: ArrayLike, labels: ArrayLike, n_bins: int = 15, strategy: str = "uniform"
) -> float:
    """ECE: ``sum_b (n_b / N) * |mean predicted in b - mean label in b|``.

    ``strategy="uniform"``: ``n_bins`` equal-width bins on [0, 1], bin ``i`` holding
    ``i/n_bins <= p < (i+1)/n_bins`` (1.0 in the last bin); ``"quantile"``: bins of (about) equal
    count. Each bin is weighted by its share of the examples; empty bins contribute nothing.
    """
    p, y, _ = _check_xy(probs, labels, None, "probs")
    _check_probs(p)
    idx, _ = _bin_index(p, n_bins, strategy)
    count = np.bincount(idx, minlength=n_bins)
    gap = np.abs(
        np.bincount(idx, weights=p, minlength=n_bins)
        - np.bincount(idx, weights=y, minlength=n_bins)
    )
    # |sum p - sum y| / N per bin equals (n_b / N) |mean p - mean y|.
    return float(gap[count > 0].sum() / p.size)


def reliability_table(
    probs: ArrayLike, labels: ArrayLike, n_bins: int = 10, strategy: str = "uniform"
) -> list[dict[str, Any]]:
    """One row per bin, in order: ``bin_lo``, ``bin_hi``, ``count``, ``mean_predicted``,
    ``observed_rate``. Bins as in ``expected_calibration_error``; an empty bin has count 0 and
    ``None`` for both means. JSON-serialisable."""
    p, y, _ = _check_xy(probs, labels, None, "probs")
    _check_probs(p)
    idx, edges = _bin_index(p, n_bins, strategy)
    count = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    rows = []
    for b in range(n_bins):
        n = int(count[b])
        rows.append(
            {
                "bin_lo": float(edges[b]),
                "bin_hi": float(edges[b + 1]),
                "count": n,
                "mean_predicted": float(sum_p[b] / n) if n else None,
                "observed_rate": float(sum_y[b] / n) if n else None,
            }
        )
    return rows
