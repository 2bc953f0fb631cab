from __future__ import annotations

import json
import math

import numpy as np
import pytest

from shopsearch.errors import DataError
from shopsearch.rerank.calibration import (
    PlattScaler,
    TemperatureScaler,
    brier_score,
    expected_calibration_error,
    fit_platt,
    fit_temperature,
    load_calibrator,
    log_loss,
    reliability_table,
)


@pytest.fixture(scope="module")
def overconfident():
    """True p = sigmoid(z); the model outputs 3 z (over-confident). Fit on half, test on half."""
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 1.5, size=40000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-z))).astype(float)
    logits = 3.0 * z
    half = z.size // 2
    return (logits[:half], y[:half]), (logits[half:], y[half:])


def _sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, dtype=float)))


def test_temperature_and_platt_fix_overconfidence(overconfident):
    (fit_z, fit_y), (test_z, test_y) = overconfident
    before = expected_calibration_error(_sigmoid(test_z), test_y)

    temp = fit_temperature(fit_z, fit_y)
    assert temp.temperature == pytest.approx(3.0, rel=0.05)
    platt = fit_platt(fit_z, fit_y)
    assert platt.a == pytest.approx(1 / 3, rel=0.05) and platt.b == pytest.approx(0.0, abs=0.05)

    for cal in (temp, platt):
        p = cal.predict_proba(test_z)
        assert expected_calibration_error(p, test_y) < before / 4
        assert log_loss(p, test_y) < log_loss(_sigmoid(test_z), test_y) - 0.05
        assert brier_score(p, test_y) < brier_score(_sigmoid(test_z), test_y)
    assert before > 0.08


def test_calibration_keeps_the_order():
    z = np.array([-3.0, -0.5, 0.1, 2.0])
    for cal in (TemperatureScaler(2.5), PlattScaler(0.7, -0.3)):
        assert np.all(np.diff(cal.predict_proba(z)) > 0)
    np.testing.assert_allclose(TemperatureScaler(2.0).predict_proba([2.0]), [_sigmoid(1.0)])
    np.testing.assert_allclose(PlattScaler(2.0, 1.0).predict_proba([-0.5]), [0.5])
    # No overflow warnings at extreme logits.
    np.testing.assert_allclose(TemperatureScaler(1.0).predict_proba([-1e4, 1e4]), [0.0, 1.0])


def test_weights_act_like_repeated_rows():
    z = np.array([-2.0, -1.0, 0.5, 1.0, 2.5])
    y = np.array([0.0, 1.0, 0.0, 1.0, 1.0])
    w = np.array([1, 2, 1, 3, 1])
    rep_z, rep_y = np.repeat(z, w), np.repeat(y, w)
    assert fit_temperature(z, y, w).temperature == pytest.approx(
        fit_temperature(rep_z, rep_y).temperature, rel=1e-4
    )
    a, b = fit_platt(z, y, w), fit_platt(rep_z, rep_y)
    assert (a.a, a.b) == pytest.approx((b.a, b.b), rel=1e-4, abs=1e-5)


def test_soft_labels_are_accepted():
    # With soft labels equal to sigmoid(z / 2) the temperature is exactly 2.
    z = np.linspace(-6, 6, 50)
    assert fit_temperature(z, _sigmoid(z / 2)).temperature == pytest.approx(2.0, rel=1e-4)
    platt = fit_platt(z, _sigmoid(0.5 * z - 1.0))
    assert (platt.a, platt.b) == pytest.approx((0.5, -1.0), abs=1e-4)


def test_log_loss_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    p = rng.random(200)
    y = (rng.random(200) < 0.4).astype(int)
    w = rng.random(200)
    assert log_loss(p, y) == pytest.approx(metrics.log_loss(y, p))
    assert log_loss(p, y, w) == pytest.approx(metrics.log_loss(y, p, sample_weight=w))
    assert brier_score(p, y) == pytest.approx(metrics.brier_score_loss(y, p))
    # Extreme probabilities are clipped, not infinite.
    assert math.isfinite(log_loss([0.0, 1.0], [1, 0]))


def test_ece_and_reliability_by_hand():
    probs = [0.1, 0.2, 0.3, 0.8, 0.9, 1.0]
    labels = [0, 1, 0, 1, 1, 0]
    # Two bins: [0, 0.5) holds 0.1, 0.2, 0.3 (mean 0.2, rate 1/3);
    # [0.5, 1] holds 0.8, 0.9, 1.0 (mean 0.9, rate 2/3).
    # ECE = 3/6 * |0.2 - 1/3| + 3/6 * |0.9 - 2/3| = 1/15 + 7/60 = 11/60.
    assert expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(11 / 60)
    table = reliability_table(probs, labels, n_bins=2)
    assert table == [
        {
            "bin_lo": 0.0,
            "bin_hi": 0.5,
            "count": 3,
            "mean_predicted": pytest.approx(0.2),
            "observed_rate": pytest.approx(1 / 3),
        },
        {
            "bin_lo": 0.5,
            "bin_hi": 1.0,
            "count": 3,
            "mean_predicted": pytest.approx(0.9),
            "observed_rate": pytest.approx(2 / 3),
        },
    ]
    # Four bins: 0.1, 0.2 | 0.3 | (empty) | 0.8, 0.9, 1.0
    # ECE = 2/6 |0.15 - 1/2| + 1/6 |0.3 - 0| + 3/6 |0.9 - 2/3| = 7/60 + 3/60 + 7/60 = 17/60.
    assert expected_calibration_error(probs, labels, n_bins=4) == pytest.approx(17 / 60)
    four = reliability_table(probs, labels, n_bins=4)
    assert [row["count"] for row in four] == [2, 1, 0, 3]
    assert four[2]["mean_predicted"] is None and four[2]["observed_rate"] is None
    json.dumps(four)
    # A perfectly calibrated bin has zero error.
    assert expected_calibration_error([0.5, 0.5], [0, 1], n_bins=10) == 0.0


def test_quantile_strategy_balances_bins():
    rng = np.random.default_rng(2)
    p = rng.random(1000) ** 3  # most mass near 0
    y = (rng.random(1000) < p).astype(float)
    counts = [row["count"] for row in reliability_table(p, y, n_bins=5, strategy="quantile")]
    assert counts == [200] * 5
    uniform = [row["count"] for row in reliability_table(p, y, n_bins=5)]
    assert uniform[0] > 500
    assert expected_calibration_error(p, y, strategy="quantile") < 0.1
    with pytest.raises(ValueError, match="strategy"):
        expected_calibration_error(p, y, strategy="width")


def test_round_trip_through_json():
    for cal in (TemperatureScaler(2.75), PlattScaler(0.31, -0.02)):
        data = json.loads(json.dumps(cal.to_dict()))
        again = load_calibrator(data)
        assert again == cal and type(again).from_dict(data) == cal
    with pytest.raises(DataError, match="unknown calibrator type"):
        load_calibrator({"type": "isotonic"})
    with pytest.raises(DataError, match="must be positive"):
        load_calibrator({"type": "temperature", "temperature": -1.0})
    with pytest.raises(DataError, match="field 'a'"):
        load_calibrator({"type": "platt", "a": "1", "b": 0.0})
    with pytest.raises(DataError, match="expected 'platt'"):
        PlattScaler.from_dict({"type": "temperature", "temperature": 1.0})


def test_bad_inputs():
    with pytest.raises(ValueError, match="one length"):
        fit_temperature([0.0, 1.0], [1.0])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\]"):
        fit_platt([0.0, 1.0], [0.0, 2.0])
    with pytest.raises(ValueError, match="not logits"):
        expected_calibration_error([3.0, -1.0], [1, 0])
    with pytest.raises(ValueError, match="NaN"):
        log_loss([np.nan], [1])
    with pytest.raises(ValueError, match="positive sum"):
        fit_temperature([0.0, 1.0], [0.0, 1.0], weights=[0.0, 0.0])
