from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from shopsearch.training.simulate import simulate_clicks, true_propensities

RANKINGS = {"q2": ["c", "d"], "q1": ["a", "b", "x", "y", "z"]}
QRELS = {"q1": {"a": 2, "b": 1}, "q2": {"d": 2}}
QUERIES = {"q1": "drill", "q2": "电钻"}


def test_true_propensities():
    np.testing.assert_allclose(true_propensities(4, 1.0), [1, 1 / 2, 1 / 3, 1 / 4])
    np.testing.assert_allclose(true_propensities(3, 2.0), [1, 1 / 4, 1 / 9])
    np.testing.assert_allclose(true_propensities(3, 0.0), [1, 1, 1])
    with pytest.raises(ValueError, match="depth"):
        true_propensities(0)


def test_layout_and_determinism():
    log = simulate_clicks(RANKINGS, QRELS, queries=QUERIES, sessions_per_query=3, depth=4, seed=7)
    # q1 shows 4 of 5 products, q2 its 2; three sessions each; queries in sorted id order.
    assert len(log) == 3 * 4 + 3 * 2
    assert [i.query for i in log[:12]] == ["drill"] * 12 and log[12].query == "电钻"
    assert [i.product_id for i in log[:4]] == ["a", "b", "x", "y"]
    assert [i.position for i in log[:4]] == [1, 2, 3, 4]
    assert log[0].session_id == "q1#0" and log[4].session_id == "q1#1"
    assert log[0].timestamp == "2024-01-01T00:00:00+00:00"
    assert log[4].timestamp == "2024-01-01T00:01:00+00:00"
    assert all(i.clicked or not i.purchased for i in log)
    again = simulate_clicks(
        dict(reversed(list(RANKINGS.items()))),
        QRELS,
        queries=QUERIES,
        sessions_per_query=3,
        depth=4,
        seed=7,
    )
    assert again == log
    a, b = (simulate_clicks(RANKINGS, QRELS, sessions_per_query=50, seed=s) for s in (7, 8))
    assert [i.clicked for i in a] != [i.clicked for i in b]


def test_click_rates_follow_the_pbm():
    rankings = {"q": ["g2", "g1", "g0"]}
    qrels = {"q": {"g2": 2, "g1": 1}}
    log = simulate_clicks(rankings, qrels, sessions_per_query=20000, eta=1.0, seed=3)
    clicks = Counter(i.product_id for i in log if i.clicked)
    buys = Counter(i.product_id for i in log if i.purchased)
    n = 20000
    # P(click at p | g) = (1/p) * P(click | g); 3 standard errors at n = 20000 is < 0.01.
    assert clicks["g2"] / n == pytest.approx(1.0 * 0.7, abs=0.01)
    assert clicks["g1"] / n == pytest.approx(0.5 * 0.3, abs=0.01)
    assert clicks["g0"] / n == pytest.approx((1 / 3) * 0.05, abs=0.005)
    assert buys["g2"] / clicks["g2"] == pytest.approx(0.2, abs=0.02)
    assert buys["g0"] == 0


def test_no_bias_and_custom_click_model():
    log = simulate_clicks(
        {"q": ["a", "b", "c", "d"]},
        {"q": {"a": 1, "b": 1, "c": 1, "d": 5}},
        sessions_per_query=4000,
        eta=0.0,
        seed=1,
        click_prob_by_grade={0: 0.0, 1: 0.5},
    )
    rates = [np.mean([i.clicked for i in log if i.position == p]) for p in range(1, 5)]
    # eta = 0: every rank examined; grade 5 falls back to the largest grade in the table.
    np.testing.assert_allclose(rates, [0.5] * 4, atol=0.03)


def test_shuffle_top_randomises_only_the_top():
    ranking = [f"p{i}" for i in range(6)]
    log = simulate_clicks(
        {"q": ranking}, {}, sessions_per_query=400, depth=6, shuffle_top=3, seed=0
    )
    seen_at = {p: Counter(i.position for i in log if i.product_id == p) for p in ranking}
    for p in ranking[:3]:
        assert set(seen_at[p]) == {1, 2, 3}
        assert min(seen_at[p].values()) > 100  # roughly 400 / 3 each
    for rank, p in enumerate(ranking[3:], start=4):
        assert seen_at[p] == Counter({rank: 400})


def test_bad_arguments():
    with pytest.raises(ValueError, match="query text"):
        simulate_clicks(RANKINGS, QRELS, queries={"q1": "drill"})
    with pytest.raises(ValueError, match="more than once"):
        simulate_clicks({"q": ["a", "a"]}, {})
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        simulate_clicks(RANKINGS, QRELS, click_prob_by_grade={0: 1.5})
    with pytest.raises(ValueError, match="sessions_per_query"):
        simulate_clicks(RANKINGS, QRELS, sessions_per_query=0)
    with pytest.raises(ValueError, match="eta"):
        simulate_clicks(RANKINGS, QRELS, eta=-1)
