"""Paired significance tests on per-query scores of two systems over the same queries."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

METHODS = ("randomization", "ttest")

# Resampled statistics are sums of the same numbers in another order; allow for rounding so
# that a resample equal to the observed difference counts as "at least as extreme".
_REL_TOL = 1e-9


def paired_test(
    a: Mapping[str, float],
    b: Mapping[str, float],
    method: str = "randomization",
    n_resamples: int = 10000,
    seed: int = 0,
) -> dict[str, Any]:
    """Two-sided paired test of whether systems ``a`` and ``b`` differ in mean score.

    ``a`` and ``b`` map query ids to a per-query measure (e.g. nDCG@10 from
    :func:`~shopsearch.benchmarks.metrics.evaluate`); they must cover the same queries.

    - ``"randomization"``: sign-flip permutation test on the differences ``d = b - a``
      (Fisher's randomisation test, as in Smucker et al. 2007). Statistic ``|mean(d)|``. When
      ``2**n <= n_resamples`` all ``2**n`` sign patterns are enumerated and ``p`` is exact;
      otherwise ``n_resamples`` random patterns (``seed``) give
      ``p = (1 + #{|mean(d*s)| >= |mean(d)|}) / (1 + n_resamples)``, which is never 0.
    - ``"ttest"``: paired Student's t-test (``scipy.stats.ttest_rel``), two-sided.

    Identical systems (all ``d == 0``) give ``p_value == 1.0`` with either method.
    Returns ``{"mean_a", "mean_b", "delta" (= mean_b - mean_a), "p_value", "n", "method"}``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise ValueError(
            f"paired test needs scores for the same queries: {len(only_a)} only in "
            f"a (e.g. {only_a[:1]}), {len(only_b)} only in b (e.g. {only_b[:1]})"
        )
    if not a:
        raise ValueError("paired test needs at least one query")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, not {n_resamples}")
    qids = sorted(a)  # a fixed order makes the random test reproducible for a given seed
    xa = np.array([float(a[q]) for q in qids], dtype=np.float64)
    xb = np.array([float(b[q]) for q in qids], dtype=np.float64)
    d = xb - xa
    n = len(qids)
    result: dict[str, Any] = {
        "mean_a": float(xa.mean()),
        "mean_b": float(xb.mean()),
        "delta": float(xb.mean() - xa.mean()),
        "n": n,
        "method": method,
    }
    if not np.any(d):
        result["p_value"] = 1.0
    elif method == "ttest":
        result["p_value"] = _ttest(xa, xb)
    else:
        result["p_value"] = _randomization(d, n_resamples, seed)
    return result


def _ttest(xa: np.ndarray, xb: np.ndarray) -> float:
    from scipy import stats

    if len(xa) < 2:
        return 1.0  # no variance estimate with one query: no evidence either way
    p = float(stats.ttest_rel(xb, xa).pvalue)
    # Constant non-zero differences give t = inf and p = 0 in scipy; NaN would mean no variance.
    return 1.0 if math.isnan(p) else p


def _randomization(d: np.ndarray, n_resamples: int, seed: int) -> float:
    n = len(d)
    observed = abs(d.sum())  # |mean| comparisons are the same as |sum| ones for fixed n
    threshold = observed - _REL_TOL * max(observed, float(np.abs(d).sum()))
    if n < 63 and 2**n <= n_resamples:
        # Exact: every sign pattern once. Bits of 0..2^n-1 give the patterns.
        patterns = np.arange(2**n, dtype=np.int64)[:, None] >> np.arange(n, dtype=np.int64)
        signs = 1.0 - 2.0 * (patterns & 1)
        stats = np.abs(signs @ d)
        return float(np.count_nonzero(stats >= threshold)) / 2**n
    rng = np.random.default_rng(seed)
    extreme = 0
    chunk = max(1, min(n_resamples, 2_000_000 // max(n, 1)))  # bound memory to ~16 MB
    done = 0
    while done < n_resamples:
        size = min(chunk, n_resamples - done)
        signs = (rng.integers(0, 2, size=(size, n), dtype=np.int8) * 2 - 1).astype(np.float64)
        extreme += int(np.count_nonzero(np.abs(signs @ d) >= threshold))
        done += size
    return (extreme + 1) / (n_resamples + 1)
