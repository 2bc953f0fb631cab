"""run_benchmark and the report files, with dict-backed fake retrievers."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import pytest

from shopsearch.benchmarks.metrics import evaluate
from shopsearch.benchmarks.report import format_table, render_markdown, write_report
from shopsearch.benchmarks.runner import BenchmarkReport, run_benchmark
from shopsearch.benchmarks.trec import read_qrels, read_queries, read_run
from shopsearch.retrieval.types import Hit, sort_hits


class DictRetriever:
    """Answers each query text with a fixed list of (product_id, score)."""

    def __init__(self, table: dict[str, list[tuple[str, float]]]) -> None:
        self.table = table
        self.calls: list[tuple[int, int]] = []  # (batch size, k)

    def search(
        self, queries: Sequence[str], k: int = 10, filters=None, *, timings=None
    ) -> list[list[Hit]]:
        self.calls.append((len(queries), k))
        if timings is not None:  # as a pipeline stage records its steps
            timings["bm25"] = timings.get("bm25", 0.0) + 0.5
        return [sort_hits([Hit(p, s) for p, s in self.table.get(q, [])])[:k] for q in queries]


QUERIES = {
    "q1": "wireless mouse",
    "q2": "无线 鼠标",
    "q3": "usb cable",
    "q4": "desk lamp",
    "q5": "unjudged query",
}
QRELS = {
    "q1": {"m1": 2, "m2": 1, "x": 0},
    "q2": {"m3": 1},
    "q3": {"c1": 2},  # the weak stage finds nothing for q3
    "q4": {"l1": 0},  # no relevant product: run, not scored
    "q9": {"z": 1},  # judged but not in the query set: not scored
}
WEAK = {
    "wireless mouse": [("x", 3.0), ("m2", 2.0), ("m1", 1.0)],
    "无线 鼠标": [("y", 1.0), ("m3", 0.5)],
    "desk lamp": [("l1", 1.0)],
}
STRONG = {
    "wireless mouse": [("m1", 3.0), ("m2", 2.0), ("x", 1.0)],
    "无线 鼠标": [("m3", 2.0), ("y", 1.0)],
    "usb cable": [("c1", 5.0), ("c2", 5.0)],
    "desk lamp": [("l1", 1.0)],
    "unjudged query": [("a", 1.0)],
}


@pytest.fixture
def report_and_dir(tmp_path):
    stages = {"weak": DictRetriever(WEAK), "strong": DictRetriever(STRONG)}
    report = run_benchmark(
        stages,
        QUERIES,
        QRELS,
        depth=100,
        out_dir=tmp_path,
        batch_size=2,
        latency_queries=3,
        warmup=1,
        extra={"index_size_mb": 1.5, "dataset": "fixture"},
        n_resamples=1000,
        progress=False,
    )
    return report, tmp_path, stages


def test_run_files_and_metrics(report_and_dir):
    report, out, stages = report_and_dir
    assert [s.name for s in report.stages] == ["weak", "strong"]
    assert report.baseline == "weak"
    assert (report.n_queries, report.n_evaluated) == (5, 3)
    assert (report.n_without_relevant, report.n_without_qrels) == (1, 1)

    weak_run = read_run(out / "weak.run")
    assert weak_run["q1"] == {"x": 3.0, "m2": 2.0, "m1": 1.0}
    assert "q3" not in weak_run  # no results -> no lines
    lines = (out / "strong.run").read_text().splitlines()
    assert lines[0] == "q1 Q0 m1 1 3.0 strong"
    assert "q3 Q0 c1 1 5.0 strong" in lines and "q3 Q0 c2 2 5.0 strong" in lines

    # The written qrels are exactly the evaluated ones.
    assert read_qrels(out / "qrels.txt") == {q: QRELS[q] for q in ("q1", "q2", "q3")}
    assert read_queries(out / "queries.tsv") == QUERIES

    weak = report.stage("weak").metrics
    # Hand: q1 first relevant at rank 2, q2 at rank 2, q3 nothing -> MRR@10 = (1/2+1/2+0)/3.
    assert weak["MRR@10"] == pytest.approx(1 / 3)
    assert weak["Recall@10"] == pytest.approx(2 / 3)
    strong = report.stage("strong").metrics
    # q3: c1 and c2 tie; trec_eval evaluates c2 first, so MRR(q3) = 1/2.
    assert strong["MRR@10"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert strong["Success@10"] == 1.0
    assert report.stage("strong").tied_queries == 1
    # In-memory metrics equal metrics of the run file read back.
    for name in ("weak", "strong"):
        _, from_file = evaluate(read_qrels(out / "qrels.txt"), read_run(out / f"{name}.run"))
        assert from_file == report.stage(name).metrics
    # Recall curve agrees with Recall@10.
    assert report.stage("strong").recall_curve[9] == pytest.approx(strong["Recall@10"])
    assert len(report.stage("weak").recall_curve) == 100


def test_batches_latency_and_significance(report_and_dir):
    report, _, stages = report_and_dir
    calls = stages["weak"].calls
    assert calls[:3] == [(2, 100), (2, 100), (1, 100)]  # 5 queries in batches of 2
    assert calls[3:] == [(1, 100)] * (1 + 3)  # 1 warm-up + 3 timed single-query calls
    for stage in report.stages:
        lat = stage.latency
        assert lat["n"] == 3
        assert 0 <= lat["p50_ms"] <= lat["p95_ms"] <= lat["p99_ms"]
        assert stage.throughput_qps > 0 and stage.batch_seconds > 0
        assert stage.peak_rss_mb is None or stage.peak_rss_mb > 1
    assert report.stage("weak").significance == {}
    sig = report.stage("strong").significance
    assert set(sig) == {"nDCG@10", "Recall@100"}
    assert sig["nDCG@10"]["n"] == 3
    # Exact test over 2^3 sign patterns (n_resamples=1000 >= 8).
    assert sig["nDCG@10"]["p_value"] in {k / 8 for k in range(1, 9)}
    assert sig["nDCG@10"]["delta"] == pytest.approx(
        report.stage("strong").metrics["nDCG@10"] - report.stage("weak").metrics["nDCG@10"]
    )


def test_report_files(report_and_dir):
    report, out, _ = report_and_dir
    data = json.loads((out / "report.json").read_text())
    assert data["baseline"] == "weak"
    assert data["extra"] == {"index_size_mb": 1.5, "dataset": "fixture"}
    assert "per_query" not in data["stages"][0]
    assert data["stages"][1]["metrics"]["MRR@10"] == pytest.approx((1 + 1 + 0.5) / 3)

    md = (out / "report.md").read_text()
    assert "| Stage " in md and "p(nDCG@10)" in md and "p(Recall@100)" in md
    assert "| weak (baseline) " in md and "| strong " in md
    assert "MRR@10" in md and "p50 ms" in md and "index_size_mb" in md
    assert "![Recall@k and latency](report.png)" in md

    png = (out / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_report_json_round_trip(report_and_dir):
    report, _, _ = report_and_dir
    again = BenchmarkReport.from_json(report.to_json(per_query=True))
    assert again == report
    assert BenchmarkReport.from_json(report.to_json()).stages[0].per_query == {}
    assert render_markdown(again) == render_markdown(report)


def test_baseline_choice_and_skipped_latency(tmp_path):
    stages = {"weak": DictRetriever(WEAK), "strong": DictRetriever(STRONG)}
    report = run_benchmark(
        stages,
        QUERIES,
        QRELS,
        depth=10,
        out_dir=tmp_path,
        baseline="strong",
        latency_queries=0,
        measures=["nDCG@10", "MRR@10"],
        significance_method="ttest",
        progress=False,
        write=False,
    )
    assert report.stage("strong").significance == {}
    assert set(report.stage("weak").significance) == {"nDCG@10"}  # Recall@100 not measured
    assert report.stage("weak").latency["n"] == 0
    assert report.stage("weak").latency["p50_ms"] is None
    assert stages["weak"].calls == [(5, 10)]
    assert not (tmp_path / "report.md").exists()
    paths = write_report(report, tmp_path / "later")
    assert paths["png"].stat().st_size > 0
    assert "| weak " in paths["markdown"].read_text()
    assert math.isfinite(report.stage("weak").metrics["nDCG@10"])


def test_depth_truncates_and_duplicates_are_dropped(tmp_path):
    table = {"wireless mouse": [("m1", 3.0), ("m1", 2.5), ("m2", 2.0), ("x", 1.0)]}

    class Raw(DictRetriever):  # returns hits as given, duplicates and all
        def search(self, queries, k=10, filters=None, *, timings=None):
            return [[Hit(p, s) for p, s in self.table.get(q, [])] for q in queries]

    run_benchmark(
        {"raw": Raw(table)},
        {"q1": "wireless mouse"},
        QRELS,
        depth=2,
        out_dir=tmp_path,
        latency_queries=0,
        progress=False,
        write=False,
    )
    assert read_run(tmp_path / "raw.run") == {"q1": {"m1": 3.0, "m2": 2.0}}


def test_bad_arguments(tmp_path):
    good = {"a": DictRetriever(WEAK)}
    with pytest.raises(ValueError, match="stage name 'my stage'"):
        run_benchmark({"my stage": DictRetriever(WEAK)}, QUERIES, QRELS, out_dir=tmp_path)
    with pytest.raises(ValueError, match="baseline 'b' is not one of"):
        run_benchmark(good, QUERIES, QRELS, out_dir=tmp_path, baseline="b")
    with pytest.raises(ValueError, match="no stages"):
        run_benchmark({}, QUERIES, QRELS, out_dir=tmp_path)
    with pytest.raises(ValueError, match="none of the queries has a relevant"):
        run_benchmark(good, {"q4": "desk lamp"}, QRELS, out_dir=tmp_path)

    class Broken:
        def search(self, queries, k=10, filters=None, *, timings=None):
            return [[]]

    with pytest.raises(
        ValueError, match="stage 'broken': search\\(\\) returned 1 result lists for 2 queries"
    ):
        run_benchmark(
            {"broken": Broken()}, QUERIES, QRELS, out_dir=tmp_path, batch_size=2, progress=False
        )


def test_format_table():
    table = format_table(
        [["bm25", 0.123456, 12], ["dense|v2", float("nan"), None]], ["Stage", "nDCG@10", "n"]
    )
    assert table.splitlines() == [
        "| Stage     | nDCG@10 |   n |",
        "| --------- | ------: | --: |",
        "| bm25      |  0.1235 |  12 |",
        "| dense\\|v2 |     n/a |     |",
    ]
    with pytest.raises(ValueError, match="row 0 has 1 cells for 2 headers"):
        format_table([["x"]], ["a", "b"])


def test_report_breaks_latency_down_by_pipeline_step(report_and_dir):
    report, out, _ = report_and_dir
    assert set(report.stages[0].step_latency) == {"bm25"}
    assert report.stages[0].step_latency["bm25"]["p99_ms"] == pytest.approx(0.5)
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "Where the time goes" in markdown and "0.50 / 0.50" in markdown
