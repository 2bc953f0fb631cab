from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from shopsearch.benchmarks.significance import paired_test


def _scores(values):
    return {f"q{i:03d}": float(v) for i, v in enumerate(values)}


@pytest.mark.parametrize("method", ["randomization", "ttest"])
def test_identical_systems_give_p_one(method):
    a = _scores([0.1, 0.5, 0.9, 0.0, 1.0] * 20)
    result = paired_test(a, dict(a), method=method)
    assert result["p_value"] == 1.0
    assert result["delta"] == 0.0 and result["n"] == 100 and result["method"] == method


def test_exact_enumeration_worked_by_hand():
    # d = b - a = [1, -1, 2]; the 8 sign patterns give sums 2, 4, 0, 2, -2, 0, -4, -2;
    # |sum| >= 2 for 6 of them -> p = 6/8.
    a = _scores([0.0, 1.0, 0.0])
    b = _scores([1.0, 0.0, 2.0])
    result = paired_test(a, b)
    assert result["p_value"] == 0.75
    assert result["mean_a"] == pytest.approx(1 / 3) and result["mean_b"] == pytest.approx(1.0)
    assert result["delta"] == pytest.approx(2 / 3)
    # All five differences +0.1: only all-plus and all-minus are as extreme -> 2/32.
    five_a = _scores([0.2, 0.3, 0.4, 0.5, 0.6])
    five_b = _scores([0.3, 0.4, 0.5, 0.6, 0.7])  # float rounding must not lose extremes
    assert paired_test(five_a, five_b)["p_value"] == 2 / 32


def test_clear_difference_gives_small_p():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.0, 0.6, size=200)
    a = _scores(base)
    b = _scores(base + 0.2 + rng.normal(0, 0.05, size=200))
    result = paired_test(a, b, n_resamples=2000, seed=3)
    assert result["p_value"] == 1 / 2001  # nothing as extreme; the +1 keeps p above zero
    assert result["delta"] == pytest.approx(0.2, abs=0.02)
    assert paired_test(a, b, method="ttest")["p_value"] < 1e-10


def test_randomization_is_reproducible_and_agrees_with_ttest_roughly():
    rng = np.random.default_rng(7)
    a_vals = rng.uniform(size=60)
    b_vals = a_vals + rng.normal(0.03, 0.2, size=60)
    a, b = _scores(a_vals), _scores(b_vals)
    first = paired_test(a, b, seed=5)
    assert paired_test(a, b, seed=5) == first
    assert paired_test(a, b, seed=6)["p_value"] != first["p_value"]
    t = paired_test(a, b, method="ttest")["p_value"]
    assert 0.0 < first["p_value"] < 1.0
    assert first["p_value"] == pytest.approx(t, abs=0.05)
    # Swapping the systems flips the sign of delta but not the two-sided p-value.
    swapped = paired_test(b, a, seed=5)
    assert swapped["p_value"] == first["p_value"] and swapped["delta"] == -first["delta"]


def test_ttest_equals_scipy():
    rng = np.random.default_rng(0)
    a_vals, b_vals = rng.uniform(size=40), rng.uniform(size=40)
    result = paired_test(_scores(a_vals), _scores(b_vals), method="ttest")
    assert result["p_value"] == pytest.approx(stats.ttest_rel(a_vals, b_vals).pvalue, rel=1e-12)


def test_order_of_keys_does_not_matter():
    a = {"x": 0.1, "y": 0.9, "z": 0.4}
    b = {"z": 0.8, "x": 0.3, "y": 0.2}
    assert paired_test(a, b) == paired_test(dict(sorted(a.items())), dict(sorted(b.items())))


def test_bad_input():
    with pytest.raises(ValueError, match="same queries: 1 only in a"):
        paired_test({"q1": 1.0, "q2": 0.0}, {"q1": 1.0})
    with pytest.raises(ValueError, match="method must be one of"):
        paired_test({"q1": 1.0}, {"q1": 0.0}, method="wilcoxon")
    with pytest.raises(ValueError, match="at least one query"):
        paired_test({}, {})
