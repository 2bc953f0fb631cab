import numpy as np
import pytest

from shopsearch.errors import DataError
from shopsearch.training.clicks import Impression
from shopsearch.training.pipeline import (
    click_pairs,
    sampled_negatives,
    simulate_click_log,
    split_queries,
)


def test_split_is_seeded_disjoint_and_adapts_to_small_sets():
    ids = [f"q{i}" for i in range(50)]
    train, dev, test = split_queries(ids, seed=3)
    assert (train, dev, test) == split_queries(list(reversed(ids)), seed=3)
    assert not (train & dev or train & test or dev & test)
    assert (len(train), len(dev), len(test)) == (30, 10, 10)  # 60/20/20 under 200 queries
    big = split_queries([f"q{i}" for i in range(1000)])
    assert (len(big[0]), len(big[1]), len(big[2])) == (800, 100, 100)
    with pytest.raises(DataError, match="at least 3"):
        split_queries(["a", "b"])


def imp(query, pid, position, clicked):
    return Impression(query=query, product_id=pid, position=position, clicked=clicked)


def test_click_pairs_naive_and_position_weighted():
    log = [
        imp("q", "a", 1, True),
        imp("q", "a", 1, False),
        imp("q", "b", 2, True),
        imp("q", "b", 2, False),
    ]
    text = {"a": "A", "b": "B"}
    naive = {p.text: (p.label, p.weight) for p in click_pairs(log, text, None)}
    assert naive == {"A": (0.5, 1.0), "B": (0.5, 1.0)}
    # Rank 2 is examined half as often, so its clicks count double: target 1.0 (clipped).
    ipw = {p.text: p.label for p in click_pairs(log, text, np.array([1.0, 0.5]))}
    assert ipw == {"A": 0.5, "B": 1.0}
    with pytest.raises(DataError, match="not in the catalogue"):
        click_pairs([imp("q", "zzz", 1, True)], text, None)


def test_sampled_negatives_avoid_shown_products():
    text = {f"p{i}": f"t{i}" for i in range(20)}
    pairs = sampled_negatives(["q1", "q2"], sorted(text), text, {"q1": {"p1", "p2"}}, 3, seed=0)
    assert len(pairs) == 6 and all(p.label == 0.0 for p in pairs)
    assert not {p.text for p in pairs if p.query == "q1"} & {"t1", "t2"}
    assert pairs == sampled_negatives(
        ["q1", "q2"], sorted(text), text, {"q1": {"p1", "p2"}}, 3, seed=0
    )


def test_simulated_log_mixes_shown_and_shuffled_sessions():
    rankings = {"q1": [f"p{i}" for i in range(10)]}
    log = simulate_click_log(
        rankings,
        {"q1": {"p3": 2}},
        {"q1": "query one"},
        sessions_per_query=10,
        shuffled_fraction=0.3,
        seed=1,
    )
    assert len(log) == 100 and {i.query for i in log} == {"query one"}
    shuffled = [i for i in log if i.session_id.endswith("-shuffled")]
    assert len(shuffled) == 30
    # In shuffled sessions p3 appears at more than one rank; in the others always at rank 4.
    assert {i.position for i in shuffled if i.product_id == "p3"} != {4}
    assert {i.position for i in log if i.product_id == "p3" and i not in shuffled} == {4}


def test_ranked_negatives_skip_judged_and_mix_head_and_tail():
    import random

    from shopsearch.training.pipeline import sample_ranked_negatives

    ranked = [f"p{i}" for i in range(100)]
    judged = {"p0": 2, "p3": 0, "p40": 1}
    picked = sample_ranked_negatives(ranked, judged, 6, random.Random(0), head=30)
    assert len(picked) == len(set(picked)) == 6 and not set(picked) & set(judged)
    head = [p for p in picked if int(p[1:]) < 32]  # the head's 30 unjudged reach rank 31
    assert len(head) == 4
    assert picked == sample_ranked_negatives(ranked, judged, 6, random.Random(0), head=30)
    # A short ranking: whatever unjudged products exist, no more.
    assert sorted(sample_ranked_negatives(["a", "b", "c"], {"b": 2}, 5, random.Random(0))) == [
        "a",
        "c",
    ]
