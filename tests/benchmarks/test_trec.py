"""Query, TREC qrels and TREC run readers and writers on tiny fixtures in each exact format."""

from __future__ import annotations

from pathlib import Path

import pytest

from shopsearch.benchmarks.trec import (
    read_qrels,
    read_queries,
    read_run,
    write_qrels,
    write_queries,
    write_run,
)
from shopsearch.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures"


# ------------------------------------------------------------------ queries


def test_read_queries_tsv_skips_header_and_keeps_extra_tabs_in_text():
    queries = read_queries(FIXTURES / "queries.tsv")
    assert queries == {"q1": "wireless mouse", "q2": "无线 鼠标", "q3": "usb-c cable\tbraided"}
    assert list(queries) == ["q1", "q2", "q3"]


def test_read_queries_jsonl_accepts_id_and_text_key_variants():
    assert read_queries(FIXTURES / "queries.jsonl") == {
        "q1": "wireless mouse",
        "q2": "无线 鼠标",
        "3": "usb-c cable",
    }


def test_read_queries_detects_jsonl_by_content_and_strips_bom(tmp_path):
    path = tmp_path / "queries.data"
    path.write_text('\ufeff{"id": "a", "text": "sofa"}\n\n', encoding="utf-8")
    assert read_queries(path) == {"a": "sofa"}
    tsv = tmp_path / "q.data"
    tsv.write_text("\ufeffa\tsofa\r\nb\tbed\r\n", encoding="utf-8")
    assert read_queries(tsv) == {"a": "sofa", "b": "bed"}


@pytest.mark.parametrize(
    "content, match",
    [
        ("q1 no tab here\n", r"q\.tsv:1: expected 'query_id<TAB>query'"),
        ("q1\tsofa\nq1\tbed\n", r"q\.tsv:2, field 'query_id': .*twice with different texts"),
        ("q1\t   \n", r"q\.tsv:1, field 'query': query 'q1' has empty text"),
        ("\tsofa\n", r"q\.tsv:1, field 'query_id': empty identifier"),
    ],
)
def test_read_queries_tsv_errors_name_file_line_and_field(tmp_path, content, match):
    path = tmp_path / "q.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=match):
        read_queries(path)


def test_read_queries_jsonl_errors(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n{"id": "b"\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"q\.jsonl:2: invalid JSON"):
        read_queries(path)
    path.write_text('{"id": "a", "title": "x"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"q\.jsonl:1, field 'query': missing field"):
        read_queries(path)
    with pytest.raises(DataError, match="queries file not found"):
        read_queries(tmp_path / "missing.tsv")


def test_write_queries_round_trip(tmp_path):
    queries = {"q1": "wireless mouse", "q2": "无线 鼠标"}
    assert read_queries(write_queries(tmp_path / "q.tsv", queries)) == queries


# ------------------------------------------------------------------ qrels


def test_read_qrels_trec():
    qrels = read_qrels(FIXTURES / "qrels.txt")
    assert qrels["q1"] == {"p1": 2, "p2": 1, "p3": 0, "p4": 2}
    assert qrels["q3"] == {"p7": 2}
    assert qrels["q4"] == {"p8": 0}
    assert len(qrels) == 5 - 1  # q1..q4


def test_read_qrels_beir_tsv_with_header():
    assert read_qrels(FIXTURES / "qrels_beir.tsv") == {"q1": {"p1": 2, "p2": 1}, "q2": {"p5": 1}}


def test_read_qrels_matches_ir_measures_reader():
    import ir_measures

    ours = read_qrels(FIXTURES / "qrels.txt")
    theirs: dict[str, dict[str, int]] = {}
    for q in ir_measures.read_trec_qrels(str(FIXTURES / "qrels.txt")):
        theirs.setdefault(q.query_id, {})[q.doc_id] = q.relevance
    assert ours == theirs


@pytest.mark.parametrize(
    "content, match",
    [
        ("q1 0 p1\n", r"qrels\.txt:1: expected 4 columns"),
        (
            "q1 0 p1 2\nq1 0 p2 high\n",
            r"qrels\.txt:2, field 'grade': relevance grade 'high' is not",
        ),
        ("q1 0 p1 0.5\n", r"qrels\.txt:1, field 'grade': .*not an integer"),
        ("q1 0 p1 1\nq1 0 p1 2\n", r"qrels\.txt:2: query 'q1' judges product 'p1' twice"),
        ("\n\n", r"qrels\.txt: no judgements found"),
    ],
)
def test_read_qrels_errors(tmp_path, content, match):
    path = tmp_path / "qrels.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=match):
        read_qrels(path)


def test_read_qrels_tolerates_float_integral_grades_and_same_duplicate(tmp_path):
    path = tmp_path / "qrels.txt"
    path.write_text("q1 0 p1 2.0\nq1 0 p1 2\nq1\t0\tp2\t-1\n", encoding="utf-8")
    assert read_qrels(path) == {"q1": {"p1": 2, "p2": -1}}


def test_write_qrels_round_trip_and_format(tmp_path):
    qrels = {"q2": {"b": 1, "a": 0}, "q1": {"z": 2}}
    path = write_qrels(tmp_path / "out.txt", qrels)
    assert path.read_text() == "q2 0 a 0\nq2 0 b 1\nq1 0 z 2\n"
    assert read_qrels(path) == qrels
    with pytest.raises(ValueError, match="contains whitespace"):
        write_qrels(tmp_path / "bad.txt", {"q 1": {"a": 1}})


# ------------------------------------------------------------------ runs


def test_read_run():
    run = read_run(FIXTURES / "run.txt")
    assert run["q1"] == {"p3": 0.9, "p1": 0.8, "pX": 0.7, "p2": 0.5}
    assert run["q2"] == {"p5": 0.5, "p6": 0.5, "pY": 0.4}
    assert set(run) == {"q1", "q2", "q4", "q6"}


def test_write_run_sorts_by_score_then_id_and_ranks_from_one(tmp_path):
    results = {"q1": [("b", 0.5), ("c", 0.9), ("a", 0.5)], "q2": [], "q3": {"x": 1.0}}
    path = write_run(tmp_path / "r.run", results, tag="bm25")
    assert path.read_text().splitlines() == [
        "q1 Q0 c 1 0.9 bm25",
        "q1 Q0 a 2 0.5 bm25",
        "q1 Q0 b 3 0.5 bm25",
        "q3 Q0 x 1 1.0 bm25",
    ]


def test_write_run_keeps_scores_bit_exact(tmp_path):
    # Rounded to 6 decimals these would tie; written with repr they stay distinct.
    scores = [0.1 + 0.2, 0.3, 1 / 3, 1e-12, 12345.678901234567, -2.5e-7]
    results = {"q": [(f"d{i}", s) for i, s in enumerate(scores)]}
    run = read_run(write_run(tmp_path / "r.run", results, tag="t"))
    assert run == {"q": {f"d{i}": s for i, s in enumerate(scores)}}
    assert all(run["q"][f"d{i}"] == s for i, s in enumerate(scores))


def test_write_run_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="appears twice"):
        write_run(tmp_path / "r", {"q": [("a", 1.0), ("a", 0.5)]}, tag="t")
    with pytest.raises(ValueError, match="NaN"):
        write_run(tmp_path / "r", {"q": [("a", float("nan"))]}, tag="t")
    with pytest.raises(ValueError, match="run tag"):
        write_run(tmp_path / "r", {"q": [("a", 1.0)]}, tag="my run")


@pytest.mark.parametrize(
    "content, match",
    [
        ("q1 Q0 p1 1 0.5\n", r"r\.run:1: expected 6 columns"),
        ("q1 Q0 p1 1 0.5 t\nq1 Q0 p2 2 high t\n", r"r\.run:2, field 'score': score 'high'"),
        ("q1 Q0 p1 first 0.5 t\n", r"r\.run:1, field 'rank'"),
        ("q1 Q0 p1 1 0.5 t\nq1 Q0 p1 2 0.4 t\n", r"r\.run:2, field 'product_id': .*twice"),
        ("q1 Q0 p1 1 nan t\n", r"r\.run:1, field 'score': score is NaN"),
    ],
)
def test_read_run_errors(tmp_path, content, match):
    path = tmp_path / "r.run"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=match):
        read_run(path)
