from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from shopsearch.errors import DataError
from shopsearch.training.clicks import Impression
from shopsearch.training.propensity import (
    estimate_propensities_em,
    fit_pbm_em,
    ipw_pair_labels,
    ipw_pointwise_targets,
    ipw_weights,
    propensity_at,
    weighted_bce,
    weighted_bce_torch,
)
from shopsearch.training.simulate import (
    DEFAULT_CLICK_PROB_BY_GRADE,
    simulate_clicks,
    true_propensities,
)

N_QUERIES, SESSIONS = 100, 40


def _judged_rankings(seed: int = 123):
    """100 queries x 10 products; grades drawn 0-2 and sorted so the ranker is decent."""
    rng = np.random.default_rng(seed)
    rankings, qrels = {}, {}
    for q in range(N_QUERIES):
        qid = f"q{q:03d}"
        pids = [f"{qid}-p{i}" for i in range(10)]
        grades = np.sort(rng.integers(0, 3, size=10))[::-1]
        rankings[qid] = pids
        qrels[qid] = {p: int(g) for p, g in zip(pids, grades)}
    return rankings, qrels


def _mixed_log(eta: float):
    """Half the sessions show the production ranking, half randomise the top 10 (80k rows).

    The production half confounds rank with relevance (naive click-through rates by rank fall
    faster than the propensities); the randomised half makes propensities identifiable.
    """
    rankings, qrels = _judged_rankings()
    log = simulate_clicks(rankings, qrels, sessions_per_query=SESSIONS, eta=eta, seed=1)
    log += simulate_clicks(
        rankings, qrels, sessions_per_query=SESSIONS, eta=eta, seed=2, shuffle_top=10
    )
    return log, qrels


@pytest.fixture(scope="module")
def mixed_log_eta1():
    return _mixed_log(1.0)


def _naive_ratio(log) -> np.ndarray:
    pos = np.array([i.position for i in log])
    clicks = np.array([i.clicked for i in log], dtype=float)
    ctr = np.bincount(pos, weights=clicks)[1:] / np.bincount(pos)[1:]
    return ctr / ctr[0]


@pytest.mark.parametrize("eta", [0.5, 1.0, 2.0])
def test_em_recovers_true_propensities(eta, mixed_log_eta1):
    log, _ = mixed_log_eta1 if eta == 1.0 else _mixed_log(eta)
    est = estimate_propensities_em(log, max_position=10)
    truth = true_propensities(10, eta)
    assert est.shape == (10,) and est[0] == 1.0
    err = np.abs(est - truth)
    assert err.max() < 0.05, (est.round(3), truth.round(3))
    # The naive click-through-rate ratio is confounded with relevance; EM does better.
    naive_err = np.abs(_naive_ratio(log) - truth)
    assert err.mean() < naive_err.mean()


def test_em_relevance_matches_click_model(mixed_log_eta1):
    log, qrels = mixed_log_eta1
    fit = fit_pbm_em(log)
    assert fit.converged and fit.n_iter < 100 and np.isfinite(fit.log_likelihood)
    for grade, p_click in DEFAULT_CLICK_PROB_BY_GRADE.items():
        rel = [r for (q, pid), r in fit.relevance.items() if qrels[q][pid] == grade]
        assert np.mean(rel) == pytest.approx(p_click, abs=0.03)


def test_em_one_step_by_hand():
    # Pair A clicked at rank 1, not clicked at rank 2; start theta = r = 1/2.
    # Non-click posteriors: P(E=1|c=0) = P(R=1|c=0) = (1/2 * 1/2) / (1 - 1/4) = 1/3.
    # M-step: theta = [1, 1/3], r_A = (1 + 1/3) / 2 = 2/3.
    log = [Impression("q", "A", 1, True), Impression("q", "A", 2, False)]
    fit = fit_pbm_em(log, max_position=2, n_iter=1)
    np.testing.assert_allclose(fit.propensities, [1.0, 1 / 3])
    assert fit.relevance == {("q", "A"): pytest.approx(2 / 3)}
    assert fit.log_likelihood == pytest.approx(math.log(2 / 3) + math.log(1 - 2 / 9))
    assert not fit.converged


def test_em_ignores_deep_ranks_and_checks_coverage(caplog):
    log = [
        Impression("q", "A", 1, True),
        Impression("q", "B", 2, False),
        Impression("q", "C", 30, True),
    ]
    with caplog.at_level(logging.WARNING, logger="shopsearch.training.propensity"):
        est = estimate_propensities_em(log, max_position=2, n_iter=5)
    assert est.shape == (2,)
    assert "more than one rank" in caplog.text  # every pair sits at a single rank
    with pytest.raises(DataError, match=r"position\(s\) \[3\]"):
        estimate_propensities_em(log, max_position=3)
    with pytest.raises(DataError, match="no clicks at position 1"):
        estimate_propensities_em([Impression("q", "A", 1, False)], max_position=1)
    with pytest.raises(DataError, match="no impressions"):
        estimate_propensities_em([Impression("q", "C", 30, True)], max_position=2)


def test_ipw_debiases_relevance_estimates(mixed_log_eta1):
    """Per grade, IPW click rates (with EM propensities) approach P(click | grade)."""
    log, qrels = mixed_log_eta1
    theta = estimate_propensities_em(log)
    grade = np.array([qrels[i.query][i.product_id] for i in log])
    clicks = np.array([i.clicked for i in log], dtype=float)
    inv = 1.0 / propensity_at([i.position for i in log], theta)
    for g, p_click in DEFAULT_CLICK_PROB_BY_GRADE.items():
        naive = clicks[grade == g].mean()
        ipw = (clicks * inv)[grade == g].mean()
        assert abs(ipw - p_click) < 0.02
        assert abs(ipw - p_click) < abs(naive - p_click) / 3

    rows = ipw_pair_labels(log, theta)
    assert len(rows) == N_QUERIES * 10 and rows == sorted(rows)
    assert all(w == 2 * SESSIONS for *_, w in rows)
    for g, p_click in DEFAULT_CLICK_PROB_BY_GRADE.items():
        targets = [t for q, pid, t, _ in rows if qrels[q][pid] == g]
        assert np.mean(targets) == pytest.approx(p_click, abs=0.03)


def test_propensity_at_and_ipw_weights_by_hand():
    theta = np.array([1.0, 0.5, 0.25])
    np.testing.assert_allclose(propensity_at([1, 2, 3, 7], theta), [1.0, 0.5, 0.25, 0.25])
    log = [
        Impression("q", "a", 2, True),
        Impression("q", "b", 2, False),
        Impression("q", "c", 9, True),
        Impression("q", "d", 1, True),
    ]
    np.testing.assert_allclose(ipw_weights(log, theta), [2.0, 1.0, 4.0, 1.0])
    np.testing.assert_allclose(ipw_weights(log, theta, clip=3.0), [2.0, 1.0, 3.0, 1.0])
    with pytest.raises(ValueError, match="clip"):
        ipw_weights(log, theta, clip=0.5)
    with pytest.raises(ValueError, match="positive"):
        propensity_at([1], np.array([1.0, 0.0]))


def test_ipw_pointwise_targets_by_hand():
    clicks = [1, 0, 0, 1, 0, 1]
    theta = [0.5, 0.5, 1.0, 0.25, 1.0, 0.05]
    groups = [0, 0, 0, 1, 3, 4]
    targets, weights = ipw_pointwise_targets(clicks, theta, groups)
    # group 0: (2 + 0 + 0) / 3; group 1: 4 -> clipped to 1; group 2: empty; group 3: 0;
    # group 4: 1/0.05 = 20 -> 10 (weight clip) -> 1 (target clip).
    np.testing.assert_allclose(targets, [2 / 3, 1.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(weights, [3, 1, 0, 1, 1])
    targets, _ = ipw_pointwise_targets([1, 0, 0, 0, 0, 0, 0, 0], [0.05] * 8, [0] * 8, clip=10)
    assert targets[0] == 1.0  # 10 / 8 > 1: the target clip binds
    targets, _ = ipw_pointwise_targets([1] + [0] * 19, [0.05] * 20, [0] * 20, clip=10)
    assert targets[0] == pytest.approx(10 / 20)  # the weight clip binds, not the target clip
    with pytest.raises(ValueError, match="one length"):
        ipw_pointwise_targets([1, 0], [0.5], [0, 0])
    with pytest.raises(ValueError, match="0 or 1"):
        ipw_pointwise_targets([2], [0.5], [0])
    with pytest.raises(ValueError, match="integer"):
        ipw_pointwise_targets([1], [0.5], [0.5])


def test_pointwise_estimator_is_unbiased_in_expectation():
    """Monte Carlo under the PBM: the IPW loss averages to the BCE against the true relevance."""
    rng = np.random.default_rng(0)
    r, z, n_groups, per_group = 0.3, 0.4, 20000, 10
    theta = rng.choice([1.0, 0.5, 0.2], size=n_groups * per_group)
    clicks = (rng.random(theta.size) < theta * r).astype(float)
    groups = np.repeat(np.arange(n_groups), per_group)
    targets, weights = ipw_pointwise_targets(clicks, theta, groups)
    logits = np.full(n_groups, z)
    s = 1 / (1 + math.exp(-z))
    bce_true = -(r * math.log(s) + (1 - r) * math.log(1 - s))
    # mean over impressions = sum(weight * bce) / sum(weight); weights are all 10 here.
    ipw_loss = weighted_bce(logits, targets, weights) / per_group
    naive_loss = weighted_bce(np.full(clicks.size, z), clicks)
    assert ipw_loss == pytest.approx(bce_true, abs=0.005)
    assert abs(naive_loss - bce_true) > 0.05
    assert targets.mean() == pytest.approx(r, abs=0.01)  # target clip at 1 rarely binds


def test_weighted_bce_by_hand_and_torch_twin():
    # sigmoid(0) = 1/2 -> log 2; sigmoid(ln 3) = 3/4, target 0 -> -log(1/4) = log 4.
    z, y, w = [0.0, math.log(3.0)], [1.0, 0.0], [2.0, 1.0]
    assert weighted_bce(z, y, w) == pytest.approx((2 * math.log(2) + math.log(4)) / 2)
    # Soft target 1/4 at z = ln 3: -(1/4 log 3/4 + 3/4 log 1/4).
    assert weighted_bce([math.log(3.0)], [0.25]) == pytest.approx(
        -(0.25 * math.log(0.75) + 0.75 * math.log(0.25))
    )
    assert weighted_bce([1000.0, -1000.0], [0.0, 1.0]) == pytest.approx(1000.0)

    torch = pytest.importorskip("torch")
    zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    loss = weighted_bce_torch(zt, torch.tensor(y), torch.tensor(w))
    assert loss.item() == pytest.approx(weighted_bce(z, y, w))
    loss.backward()
    # d/dz of mean(w * bce) = w * (sigmoid(z) - y) / n
    np.testing.assert_allclose(zt.grad.numpy(), [2 * (0.5 - 1) / 2, 1 * 0.75 / 2])
    with pytest.raises(ValueError, match="one shape"):
        weighted_bce([0.0], [1.0, 0.0])
