"""Metric values worked out by hand with trec_eval's conventions, and agreement with
ir-measures on run files written and read back.

Fixture (fixtures/qrels.txt, fixtures/run.txt), relevant = grade >= 1:

- q1: judged p1=2, p2=1, p3=0, p4=2. Ranked p3 (0.9, grade 0), p1 (0.8, 2), pX (0.7,
  unjudged), p2 (0.5, 1); p4 not retrieved.
- q2: judged p5=1, p6=0. p5 and p6 tie at 0.5, pY 0.4. trec_eval puts ties in descending id
  order, so the evaluated ranking is p6, p5, pY (the displayed one is p5, p6, pY).
- q3: judged p7=2, no results at all -> scores 0 (not dropped).
- q4: only a grade-0 judgement -> not evaluated.
- q6: in the run only -> ignored.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from shopsearch.benchmarks.metrics import (
    DEFAULT_MEASURES,
    count_tied_queries,
    evaluable_qrels,
    evaluate,
    hits_to_run,
    measure_name,
    parse_measure,
    recall_curve,
    trec_order,
)
from shopsearch.benchmarks.trec import read_qrels, read_run, write_qrels, write_run
from shopsearch.retrieval.types import Hit

FIXTURES = Path(__file__).parent / "fixtures"
L2 = math.log2

# q1: DCG = 2/log2(3) + 1/log2(5); ideal gains 2, 2, 1 -> 2/log2(2) + 2/log2(3) + 1/log2(4).
NDCG_Q1 = (2 / L2(3) + 1 / L2(5)) / (2 + 2 / L2(3) + 1 / L2(4))
# q2: the relevant p5 is second after the tie -> 1/log2(3); ideal 1.
NDCG_Q2 = 1 / L2(3)

EXPECTED_PER_QUERY = {
    "Recall@10": {"q1": 2 / 3, "q2": 1.0, "q3": 0.0},
    "Recall@100": {"q1": 2 / 3, "q2": 1.0, "q3": 0.0},
    "Recall@1000": {"q1": 2 / 3, "q2": 1.0, "q3": 0.0},
    "nDCG@10": {"q1": NDCG_Q1, "q2": NDCG_Q2, "q3": 0.0},
    "nDCG@100": {"q1": NDCG_Q1, "q2": NDCG_Q2, "q3": 0.0},
    "MRR@10": {"q1": 1 / 2, "q2": 1 / 2, "q3": 0.0},
    "P@10": {"q1": 2 / 10, "q2": 1 / 10, "q3": 0.0},
    "Success@10": {"q1": 1.0, "q2": 1.0, "q3": 0.0},
}


@pytest.fixture
def qrels():
    return read_qrels(FIXTURES / "qrels.txt")


@pytest.fixture
def run():
    return read_run(FIXTURES / "run.txt")


def test_hand_computed_values(qrels, run):
    per_query, aggregate = evaluate(qrels, run)
    assert list(per_query) == list(DEFAULT_MEASURES)
    assert NDCG_Q1 == pytest.approx(0.4499201, abs=1e-7)  # the arithmetic itself
    for name, expected in EXPECTED_PER_QUERY.items():
        assert list(per_query[name]) == ["q1", "q2", "q3"], name
        for qid, value in expected.items():
            assert per_query[name][qid] == pytest.approx(value, rel=1e-12, abs=1e-15), (name, qid)
        assert aggregate[name] == pytest.approx(sum(expected.values()) / 3, rel=1e-12), name
    assert aggregate["Recall@10"] == pytest.approx(5 / 9)
    assert aggregate["MRR@10"] == pytest.approx(1 / 3)
    assert aggregate["Success@10"] == pytest.approx(2 / 3)


def test_cutoffs_apply_to_trec_eval_order(qrels, run):
    per_query, _ = evaluate(qrels, run, ["MRR@1", "MRR@2", "Recall@2", "nDCG@1", "P@1"])
    # q2's tie puts the non-relevant p6 first, so nothing relevant at rank 1.
    assert per_query["MRR@1"] == {"q1": 0.0, "q2": 0.0, "q3": 0.0}
    assert per_query["MRR@2"] == {"q1": 0.5, "q2": 0.5, "q3": 0.0}
    assert per_query["Recall@2"] == pytest.approx({"q1": 1 / 3, "q2": 1.0, "q3": 0.0})
    assert per_query["nDCG@1"] == {"q1": 0.0, "q2": 0.0, "q3": 0.0}
    assert per_query["P@1"] == {"q1": 0.0, "q2": 0.0, "q3": 0.0}


def test_ties_follow_trec_eval_descending_id(qrels):
    # Same scores, only the id order decides: "p6" > "p5", so trec_eval ranks p6 first.
    tie = {"q2": {"p5": 1.0, "p6": 1.0}}
    assert trec_order(tie["q2"]) == [("p6", 1.0), ("p5", 1.0)]
    per_query, _ = evaluate(qrels, tie, ["MRR@10"])
    assert per_query["MRR@10"]["q2"] == 0.5
    # Renaming the relevant product to sort after the other flips the outcome.
    per_query, _ = evaluate({"q2": {"p7": 1, "p6": 0}}, {"q2": {"p7": 1.0, "p6": 1.0}}, ["MRR@10"])
    assert per_query["MRR@10"]["q2"] == 1.0
    assert count_tied_queries(tie) == 1
    assert count_tied_queries({"q": {"a": 1.0, "b": 0.5}}) == 0


def test_query_without_results_counts_as_zero(qrels, run):
    _, with_q3_empty = evaluate(qrels, {**run, "q3": {}})
    _, without_q3 = evaluate(qrels, run)
    assert with_q3_empty == without_q3
    _, only_answered = evaluate({q: qrels[q] for q in ("q1", "q2")}, run)
    # Dropping q3 (what plain trec_eval / pytrec_eval would do) gives higher numbers.
    assert only_answered["Recall@10"] == pytest.approx(5 / 6)
    assert without_q3["Recall@10"] == pytest.approx(5 / 9)


def test_queries_without_relevant_products(qrels, run):
    assert set(evaluable_qrels(qrels)) == {"q1", "q2", "q3"}
    per_query, aggregate = evaluate(qrels, run, ["Recall@10"], require_relevant=False)
    assert per_query["Recall@10"]["q4"] == 0.0
    assert aggregate["Recall@10"] == pytest.approx(5 / 12)
    with pytest.raises(ValueError, match="no query has a relevant judged product"):
        evaluate({"q4": {"p8": 0}}, run)


def test_graded_gain_is_linear(qrels):
    # q1 with the grade-1 product first: DCG = 1 + 2/log2(3); trec_eval uses gain = grade.
    per_query, _ = evaluate(qrels, {"q1": {"p2": 3.0, "p1": 2.0}}, ["nDCG@10"])
    assert per_query["nDCG@10"]["q1"] == pytest.approx(
        (1 + 2 / L2(3)) / (2 + 2 / L2(3) + 1 / L2(4)), rel=1e-12
    )


def test_file_round_trip_equals_in_memory_and_ir_measures(tmp_path, qrels, run):
    import ir_measures

    ours_per_query, ours = evaluate(qrels, run)
    run_path = write_run(tmp_path / "sys.run", run, tag="sys")
    qrels_path = write_qrels(tmp_path / "qrels.txt", evaluable_qrels(qrels))
    back_per_query, back = evaluate(read_qrels(qrels_path), read_run(run_path))
    assert back == ours and back_per_query == ours_per_query

    # ir-measures reading the files itself (pytrec_eval provider, i.e. trec_eval -c).
    measures = [parse_measure(m) for m in DEFAULT_MEASURES if not m.startswith("MRR")]
    theirs = ir_measures.calc_aggregate(
        measures,
        ir_measures.read_trec_qrels(str(qrels_path)),
        ir_measures.read_trec_run(str(run_path)),
    )
    for m in measures:
        assert ours[measure_name(m)] == pytest.approx(theirs[m], rel=1e-12, abs=1e-15), str(m)


def test_mrr_matches_ir_measures_when_no_ties(qrels):
    import ir_measures

    no_ties = {
        "q1": {"p3": 0.9, "p1": 0.8, "pX": 0.7, "p2": 0.5},
        "q2": {"pY": 0.7, "p6": 0.6, "p5": 0.5},
    }
    per_query, ours = evaluate(qrels, no_ties, ["MRR@10", "MRR@2", "MRR"])
    assert per_query["MRR@2"]["q2"] == 0.0 and per_query["MRR"]["q2"] == pytest.approx(1 / 3)
    theirs = ir_measures.calc_aggregate(
        [ir_measures.RR @ 10, ir_measures.RR @ 2, ir_measures.RR], evaluable_qrels(qrels), no_ties
    )
    assert ours["MRR@10"] == pytest.approx(theirs[ir_measures.RR @ 10], rel=1e-12)
    assert ours["MRR@2"] == pytest.approx(theirs[ir_measures.RR @ 2], rel=1e-12)
    assert ours["MRR"] == pytest.approx(theirs[ir_measures.RR], rel=1e-12)


def test_measure_names_and_parsing():
    assert measure_name("Recall@100") == "Recall@100"
    assert measure_name("R@100") == "Recall@100"
    assert measure_name("RR@10") == "MRR@10"
    assert measure_name("MRR@10") == "MRR@10"
    assert measure_name("nDCG@10") == "nDCG@10"
    assert measure_name("R(rel=2)@10") == "Recall(rel=2)@10"
    assert str(parse_measure("Recall(rel=3)@100")) == "R(rel=3)@100"
    with pytest.raises(ValueError, match="unknown measure 'Bogus@3'"):
        parse_measure("Bogus@3")
    with pytest.raises(ValueError, match="duplicate measures"):
        evaluate({"q": {"a": 1}}, {"q": {"a": 1.0}}, ["R@10", "Recall@10"])


def test_stricter_relevance_level(qrels, run):
    per_query, _ = evaluate(qrels, run, ["Recall(rel=2)@10"])
    # q1: grade-2 products p1, p4 -> p1 found; q2: no grade-2 product -> 0.
    assert per_query["Recall(rel=2)@10"] == pytest.approx({"q1": 0.5, "q2": 0.0, "q3": 0.0})


def test_recall_curve_matches_recall_at_k(qrels, run):
    curve = recall_curve(qrels, run, depth=100)
    assert len(curve) == 100
    per_query, agg = evaluate(
        qrels, run, ["Recall@1", "Recall@2", "Recall@4", "Recall@10", "Recall@100"]
    )
    for k in (1, 2, 4, 10, 100):
        assert curve[k - 1] == pytest.approx(agg[f"Recall@{k}"], rel=1e-12), k
    assert curve[:4] == pytest.approx([0.0, (1 / 3 + 1) / 3, (1 / 3 + 1) / 3, (2 / 3 + 1) / 3])


def test_hits_to_run_keeps_first_duplicate():
    run = hits_to_run({"q": [Hit("a", 2.0), Hit("b", 1.0), Hit("a", 0.5)], "r": [("x", 1)]})
    assert run == {"q": {"a": 2.0, "b": 1.0}, "r": {"x": 1.0}}
