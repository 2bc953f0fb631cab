"""Benchmark reports: Markdown tables, JSON and a PNG figure.

matplotlib is imported inside the plotting function and drawn through its Agg canvas directly
(no ``pyplot``, no global backend switch), so writing a report works headless and leaves the
caller's matplotlib state alone.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shopsearch.benchmarks.runner import BenchmarkReport


def _cell(value: Any, float_format: str) -> str:
    if value is None:
        text = ""
    elif isinstance(value, float):
        text = "n/a" if math.isnan(value) else format(value, float_format)
    else:
        text = str(value)
    # A pipe or newline would break the Markdown table.
    return text.replace("|", "\\|").replace("\n", " ")


def format_table(
    rows: Sequence[Sequence[Any]],
    headers: Sequence[str],
    float_format: str = ".4f",
    align: Sequence[str] | None = None,
) -> str:
    """A GitHub-flavoured Markdown table. Floats use ``float_format`` (NaN -> "n/a");
    ``align`` per column: "l" or "r" (default: first column left, the rest right). Columns are
    padded so the table also reads well as plain text in a terminal."""
    headers = [str(h) for h in headers]
    body = [[_cell(v, float_format) for v in row] for row in rows]
    for i, row in enumerate(body):
        if len(row) != len(headers):
            raise ValueError(f"row {i} has {len(row)} cells for {len(headers)} headers")
    align = list(align) if align is not None else ["l"] + ["r"] * (len(headers) - 1)
    if len(align) != len(headers) or any(a not in ("l", "r") for a in align):
        raise ValueError("align needs one 'l' or 'r' per column")
    widths = [
        max([3, len(_cell(h, float_format))] + [len(r[i]) for r in body])
        for i, h in enumerate(headers)
    ]

    def line(cells: Sequence[str]) -> str:
        padded = [c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(cells, widths, align)]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * (w - 1) + ":" if a == "r" else "-" * w for w, a in zip(widths, align)]
    lines = [line([_cell(h, float_format) for h in headers]), "| " + " | ".join(rule) + " |"]
    lines += [line(r) for r in body]
    return "\n".join(lines)


def _p_text(p: float | None) -> str:
    if p is None:
        return "-"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def quality_rows(report: BenchmarkReport) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows of the quality table: one row per stage, every measure, then the
    p-value of each tested measure against the baseline ("-" for the baseline)."""
    tested = []
    for stage in report.stages:
        tested += [m for m in stage.significance if m not in tested]
    headers = ["Stage"] + list(report.measures) + [f"p({m})" for m in tested]
    rows = []
    for stage in report.stages:
        name = stage.name + (" (baseline)" if stage.name == report.baseline else "")
        row: list[Any] = [name] + [stage.metrics.get(m) for m in report.measures]
        row += [
            _p_text(stage.significance[m]["p_value"]) if m in stage.significance else "-"
            for m in tested
        ]
        rows.append(row)
    return headers, rows


#: Pipeline steps in the order a query passes them (``retrieval.base.Timings`` names).
STEP_ORDER = (
    "filters",
    "analysis",
    "bm25",
    "encode_query",
    "dense_search",
    "fusion",
    "rerank",
    "ltr",
)


def latency_rows(report: BenchmarkReport) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows of the latency table (milliseconds, queries/s, MB)."""
    headers = [
        "Stage",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "mean ms",
        "batch q/s",
        "peak RSS MB",
        "ties@10",
    ]
    rows = []
    for s in report.stages:
        lat = s.latency
        rows.append(
            [
                s.name,
                lat.get("p50_ms"),
                lat.get("p95_ms"),
                lat.get("p99_ms"),
                lat.get("mean_ms"),
                s.throughput_qps,
                s.peak_rss_mb,
                s.tied_queries,
            ]
        )
    return headers, rows


def render_markdown(report: BenchmarkReport, image: str | None = None) -> str:
    """The whole report as Markdown (what ``report.md`` holds)."""
    out = ["# Benchmark report", ""]
    out.append(
        f"{report.n_evaluated} evaluated queries ({report.n_queries} run; "
        f"{report.n_without_qrels} without judgements and {report.n_without_relevant} "
        f"without a relevant product are not scored), depth {report.depth}, "
        f"created {report.created}."
    )
    out += ["", "## Quality", ""]
    headers, rows = quality_rows(report)
    out.append(format_table(rows, headers))
    method = (
        "two-sided paired randomisation test "
        f"({report.n_resamples} random sign flips, seed {report.seed}; all 2^n flips when "
        "2^n is not larger)"
        if report.significance_method == "randomization"
        else "two-sided paired t-test"
    )
    out += [
        "",
        f"p: {method} against the baseline `{report.baseline}`, per query over the "
        f"{report.n_evaluated} evaluated queries.",
        "Conventions (trec_eval): nDCG gain = grade, relevant = grade >= 1, ties ordered by "
        "product id descending, queries without results score 0. Reproduce a number with "
        "`trec_eval -c -m ndcg_cut.10 qrels.txt <stage>.run` (MRR@10: "
        "`-c -M 10 -m recip_rank`).",
    ]
    out += ["", "## Speed", ""]
    headers, rows = latency_rows(report)
    out.append(format_table(rows, headers, float_format=".3f"))
    out += [
        "",
        f"Latency: single-query calls at k={report.depth} over the first "
        f"{report.latency_queries} queries after a warm-up; q/s: batches of "
        f"{report.batch_size}. Peak RSS is the process's peak so far. ties@10: queries with "
        "equal scores in their top 10.",
    ]
    steps = [step for step in STEP_ORDER if any(step in s.step_latency for s in report.stages)]
    if steps:
        out += ["", "Where the time goes, per step of each stage's pipeline (p50 / p99 ms):", ""]

        def cell(values: dict[str, float] | None) -> str:
            return f"{values['p50_ms']:.2f} / {values['p99_ms']:.2f}" if values else "-"

        out.append(
            format_table(
                [[s.name] + [cell(s.step_latency.get(t)) for t in steps] for s in report.stages],
                ["Stage", *steps],
                align=["l"] + ["r"] * len(steps),
            )
        )
    if report.extra:
        out += ["", "## Setup", ""]
        out.append(
            format_table(
                [[k, str(v)] for k, v in report.extra.items()], ["Item", "Value"], align=["l", "l"]
            )
        )
    out += ["", "## Run files", ""]
    out += [f"- `{s.run_file}` ({s.n_results} results)" for s in report.stages]
    if image:
        out += ["", f"![Recall@k and latency]({image})"]
    return "\n".join(out) + "\n"


def plot_report(report: BenchmarkReport, path: str | os.PathLike) -> Path:
    """Write a PNG: Recall@k for k = 1..depth per stage (log x axis) and a latency bar chart
    (p50/p95/p99 per stage)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax_recall, ax_latency = fig.subplots(1, 2)
    for stage in report.stages:
        if stage.recall_curve:
            ks = np.arange(1, len(stage.recall_curve) + 1)
            ax_recall.plot(ks, stage.recall_curve, label=stage.name)
    ax_recall.set_xscale("log")
    ax_recall.set_xlim(1, max(report.depth, 2))
    ax_recall.set_ylim(0, 1.02)  # a curve at 1.0 stays visible
    ax_recall.set_xlabel("k")
    ax_recall.set_ylabel("Recall@k")
    ax_recall.set_title(f"Recall@k ({report.n_evaluated} queries)")
    ax_recall.grid(True, which="both", alpha=0.3)
    ax_recall.legend(loc="lower right", fontsize="small")

    names = [s.name for s in report.stages]
    x = np.arange(len(names))
    width = 0.27
    for i, key in enumerate(("p50_ms", "p95_ms", "p99_ms")):
        values = [s.latency.get(key, float("nan")) for s in report.stages]
        values = [0.0 if v is None or math.isnan(v) else v for v in values]
        ax_latency.bar(x + (i - 1) * width, values, width, label=key.replace("_ms", ""))
    ax_latency.set_xticks(x, names, rotation=20, ha="right")
    ax_latency.set_ylabel("ms per query")
    ax_latency.set_title("Single-query latency")
    ax_latency.legend(fontsize="small")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, format="png")
    return out


def write_report(report: BenchmarkReport, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``report.png`` into ``out_dir``; returns the
    paths under keys "json", "markdown" and "png"."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "png": out / "report.png"}
    paths["json"].write_text(report.to_json() + "\n", encoding="utf-8")
    plot_report(report, paths["png"])
    paths["markdown"].write_text(render_markdown(report, image=paths["png"].name), encoding="utf-8")
    return paths
