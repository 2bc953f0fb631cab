"""Run retrieval stages over a labelled query set: run files, metrics, latency, significance.

Everything a result needs to be checked independently lands in ``out_dir``: one TREC run file
per stage (``<stage>.run``, tag = stage name), the judgements actually evaluated
(``qrels.txt``), the queries (``queries.tsv``) and the report (``report.json``, ``report.md``,
``report.png``). ``trec_eval -c -m ndcg_cut.10 qrels.txt <stage>.run`` reproduces the numbers.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import platform
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shopsearch.errors import DataError
from shopsearch.retrieval.base import Retriever

logger = logging.getLogger(__name__)

#: Measures compared against the baseline with a paired test.
SIGNIFICANCE_MEASURES: tuple[str, ...] = ("nDCG@10", "Recall@100")

_STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass
class StageResult:
    """One stage's results. ``latency`` holds ``p50_ms``, ``p95_ms``, ``p99_ms``,
    ``mean_ms`` and ``n`` (single-query calls; None when skipped); ``significance`` maps a
    measure to :func:`~shopsearch.benchmarks.significance.paired_test`'s dict against the
    baseline (empty for the baseline itself); ``recall_curve[k-1]`` is mean Recall@k."""

    name: str
    run_file: str
    metrics: dict[str, float]
    latency: dict[str, float | None]
    throughput_qps: float | None
    batch_seconds: float
    peak_rss_mb: float | None
    n_results: int
    tied_queries: int
    recall_curve: list[float] = field(default_factory=list)
    significance: dict[str, dict[str, Any]] = field(default_factory=dict)
    per_query: dict[str, dict[str, float]] = field(default_factory=dict)
    #: ``{step: {"p50_ms", "p99_ms"}}`` over the same single-query calls as ``latency``: where
    #: a stage's time goes (bm25, encode_query, dense_search, fusion, rerank, ...).
    step_latency: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class BenchmarkReport:
    """The outcome of :func:`run_benchmark`; serialise with :meth:`to_json` /
    :meth:`to_markdown` (or write all files with
    :func:`~shopsearch.benchmarks.report.write_report`).

    Query counts: ``n_queries`` were run; ``n_evaluated`` of them were scored (judged, with at
    least one relevant product); ``n_without_relevant`` had only grade-0 judgements;
    ``n_without_qrels`` had no judgements at all (both are run but not scored).
    """

    stages: list[StageResult]
    baseline: str
    measures: list[str]
    depth: int
    n_queries: int
    n_evaluated: int
    n_without_relevant: int
    n_without_qrels: int
    significance_method: str
    n_resamples: int
    seed: int
    latency_queries: int
    batch_size: int
    out_dir: str
    created: str
    extra: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)

    def stage(self, name: str) -> StageResult:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage named {name!r}; stages: {[s.name for s in self.stages]}")

    def to_dict(self, per_query: bool = False) -> dict[str, Any]:
        """Plain JSON-able dict; per-query scores only when ``per_query`` (they can be large,
        and the run files plus ``qrels.txt`` reproduce them)."""
        out = dataclasses.asdict(self)
        if not per_query:
            for stage in out["stages"]:
                stage.pop("per_query", None)
        return out

    def to_json(self, per_query: bool = False) -> str:
        return json.dumps(self.to_dict(per_query), indent=2, ensure_ascii=False, default=str)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BenchmarkReport:
        fields = {f.name for f in dataclasses.fields(StageResult)}
        stages = [
            StageResult(**{k: v for k, v in s.items() if k in fields}) for s in data["stages"]
        ]
        top = {f.name for f in dataclasses.fields(cls)} - {"stages"}
        return cls(stages=stages, **{k: v for k, v in data.items() if k in top})

    @classmethod
    def from_json(cls, text: str) -> BenchmarkReport:
        return cls.from_dict(json.loads(text))

    def to_markdown(self, image: str | None = None) -> str:
        """Quality and latency tables; ``image``: a file name to embed (e.g. report.png)."""
        from shopsearch.benchmarks.report import render_markdown

        return render_markdown(self, image=image)


def _peak_rss_mb() -> float | None:
    """The process's peak resident memory so far (monotonic across stages)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _environment() -> dict[str, Any]:
    import numpy as np

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
    }
    try:
        from importlib.metadata import version

        env["shopsearch"] = version("shopsearch")
        env["ir_measures"] = version("ir-measures")
    except Exception:  # metadata is informative only
        pass
    return env


def _percentile(values: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def _check_hits(stage: str, batch: Sequence[str], results: Any) -> None:
    if not isinstance(results, list) or len(results) != len(batch):
        got = len(results) if isinstance(results, list) else type(results).__name__
        raise ValueError(
            f"stage {stage!r}: search() returned {got} result lists for {len(batch)} queries"
        )


def _search_all(
    name: str,
    retriever: Retriever,
    qids: list[str],
    texts: list[str],
    depth: int,
    batch_size: int,
    progress: bool,
) -> tuple[dict[str, list[tuple[str, float]]], float]:
    from tqdm.auto import tqdm

    results: dict[str, list[tuple[str, float]]] = {}
    unsorted = duplicates = 0
    started = time.perf_counter()
    with tqdm(total=len(qids), desc=name, unit="q", disable=not progress, leave=False) as bar:
        for i in range(0, len(qids), batch_size):
            batch_ids, batch = qids[i : i + batch_size], texts[i : i + batch_size]
            hits_lists = retriever.search(batch, k=depth)
            _check_hits(name, batch, hits_lists)
            for qid, hits in zip(batch_ids, hits_lists):
                pairs: list[tuple[str, float]] = []
                seen: set[str] = set()
                previous = float("inf")
                for hit in hits:
                    pid, score = str(hit.product_id), float(hit.score)
                    if score > previous:
                        unsorted += 1
                    previous = score
                    if pid in seen:
                        duplicates += 1
                        continue
                    seen.add(pid)
                    pairs.append((pid, score))
                # Keep the engine's order (-score, id) and at most `depth` results, as the run
                # file will.
                pairs.sort(key=lambda p: (-p[1], p[0]))
                results[qid] = pairs[:depth]
            bar.update(len(batch))
    elapsed = time.perf_counter() - started
    if unsorted:
        logger.warning(
            "stage %r: %d hits came after a lower score; metrics follow the scores, "
            "as trec_eval does, not the returned order",
            name,
            unsorted,
        )
    if duplicates:
        logger.warning(
            "stage %r: %d duplicate products in result lists were dropped "
            "(kept the first occurrence)",
            name,
            duplicates,
        )
    return results, elapsed


def _measure_latency(
    retriever: Retriever, texts: list[str], depth: int, n: int, warmup: int
) -> tuple[dict[str, float | None], dict[str, dict[str, float]]]:
    """Total single-query latency, and per step of the pipeline (its ``timings``)."""
    sample = texts[:n]
    if not sample:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None, "n": 0}, {}
    for text in sample[:warmup]:  # first calls pay for lazy loading, caches, thread pools
        retriever.search([text], k=depth)
    times = []
    steps: dict[str, list[float]] = {}
    for text in sample:
        timings: dict[str, float] = {}
        started = time.perf_counter()
        retriever.search([text], k=depth, timings=timings)
        times.append((time.perf_counter() - started) * 1000.0)
        for step, ms in timings.items():
            steps.setdefault(step, []).append(ms)
    step_latency = {
        step: {"p50_ms": _percentile(values, 50), "p99_ms": _percentile(values, 99)}
        for step, values in steps.items()
    }
    return {
        "p50_ms": _percentile(times, 50),
        "p95_ms": _percentile(times, 95),
        "p99_ms": _percentile(times, 99),
        "mean_ms": sum(times) / len(times),
        "n": len(times),
    }, step_latency


def run_benchmark(
    stages: Mapping[str, Retriever],
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    depth: int = 1000,
    out_dir: str | os.PathLike,
    batch_size: int = 64,
    latency_queries: int = 200,
    baseline: str | None = None,
    extra: Mapping[str, Any] | None = None,
    measures: Sequence[Any] | None = None,
    significance_measures: Sequence[str] = SIGNIFICANCE_MEASURES,
    significance_method: str = "randomization",
    n_resamples: int = 10000,
    seed: int = 0,
    warmup: int = 5,
    progress: bool = True,
    write: bool = True,
) -> BenchmarkReport:
    """Benchmark each retriever in ``stages`` (name -> retriever, in report order).

    For each stage: all ``queries`` are searched in batches of ``batch_size`` with
    ``k=depth`` (the wall time gives ``throughput_qps``); the results go to
    ``out_dir/<stage>.run`` and are scored by :func:`~shopsearch.benchmarks.metrics.evaluate`
    (``measures``, default :data:`~shopsearch.benchmarks.metrics.DEFAULT_MEASURES`); then
    ``warmup`` single-query calls and single-query calls over the first ``latency_queries``
    queries give p50/p95/p99 latency in ms (``latency_queries=0`` skips this). Peak RSS is the
    process's peak so far (``ru_maxrss``), so it only grows from stage to stage.

    Only queries that appear in both ``queries`` and ``qrels`` are evaluated (a judged query
    that was not asked is not a failure of the system); see the metrics module for the rest.
    Each non-baseline stage gets a paired test (``significance_method``) against ``baseline``
    (default: the first stage) on ``significance_measures`` present in ``measures``.
    ``extra`` (e.g. index size, data set name) is stored as-is in the report.

    With ``write=True`` the report files are written too (needs matplotlib).
    """
    from shopsearch.benchmarks.metrics import (
        DEFAULT_MEASURES,
        count_tied_queries,
        evaluable_qrels,
        evaluate,
        measure_name,
        parse_measure,
        recall_curve,
    )
    from shopsearch.benchmarks.significance import paired_test
    from shopsearch.benchmarks.trec import write_qrels, write_queries, write_run

    if not stages:
        raise ValueError("no stages to benchmark")
    for name in stages:
        if not _STAGE_NAME.match(name):
            raise ValueError(
                f"stage name {name!r} must be letters, digits, '.', '_', '+' or "
                "'-' (it becomes a file name and a run tag)"
            )
    if depth < 1 or batch_size < 1 or latency_queries < 0:
        raise ValueError("depth and batch_size must be >= 1 and latency_queries >= 0")
    baseline = baseline if baseline is not None else next(iter(stages))
    if baseline not in stages:
        raise ValueError(f"baseline {baseline!r} is not one of the stages {list(stages)}")
    if not queries:
        raise DataError("no queries to run: the queries file lists none")
    measure_names = [measure_name(m) for m in (measures or DEFAULT_MEASURES)]
    too_deep = [
        n
        for n, m in zip(measure_names, map(parse_measure, measures or DEFAULT_MEASURES))
        if isinstance(m.params.get("cutoff"), int) and m.params["cutoff"] > depth
    ]
    if too_deep:
        logger.warning(
            "depth %d is below the cutoff of %s: those numbers only see the top %d",
            depth,
            ", ".join(too_deep),
            depth,
        )

    asked = {q: docs for q, docs in qrels.items() if q in queries}
    judged_not_asked = len(qrels) - len(asked)
    if judged_not_asked:
        logger.warning(
            "%d judged queries are not in the query set and are not evaluated", judged_not_asked
        )
    eval_qrels = evaluable_qrels(asked)
    if not eval_qrels:
        raise DataError(
            "none of the queries has a relevant judged product (grade >= 1) in the qrels; "
            "nothing to evaluate"
        )
    n_without_qrels = sum(1 for q in queries if q not in qrels)
    n_without_relevant = len(asked) - len(eval_qrels)
    if n_without_qrels or n_without_relevant:
        logger.info(
            "%d queries have no judgements and %d only grade-0 ones; they are run but not scored",
            n_without_qrels,
            n_without_relevant,
        )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_qrels(out / "qrels.txt", eval_qrels)
    write_queries(out / "queries.tsv", queries)
    qids, texts = list(queries), [queries[q] for q in queries]

    results: list[StageResult] = []
    for name, retriever in stages.items():
        logger.info("stage %s: %d queries, depth %d", name, len(qids), depth)
        hits, seconds = _search_all(name, retriever, qids, texts, depth, batch_size, progress)
        run_path = write_run(out / f"{name}.run", hits, tag=name)
        run = {q: dict(pairs) for q, pairs in hits.items()}
        per_query, aggregate = evaluate(eval_qrels, run, measure_names)
        latency, step_latency = _measure_latency(retriever, texts, depth, latency_queries, warmup)
        results.append(
            StageResult(
                name=name,
                run_file=run_path.name,
                metrics=aggregate,
                latency=latency,
                throughput_qps=len(qids) / seconds if seconds > 0 else None,
                batch_seconds=seconds,
                peak_rss_mb=_peak_rss_mb(),
                n_results=sum(len(p) for p in hits.values()),
                tied_queries=count_tied_queries(run, 10),
                recall_curve=recall_curve(eval_qrels, run, depth),
                per_query=per_query,
                step_latency=step_latency,
            )
        )
        logger.info("stage %s: %s", name, ", ".join(f"{k}={v:.4f}" for k, v in aggregate.items()))

    base = next(s for s in results if s.name == baseline)
    tested = [m for m in significance_measures if m in measure_names]
    for stage in results:
        if stage.name == baseline:
            continue
        stage.significance = {
            m: paired_test(
                base.per_query[m],
                stage.per_query[m],
                method=significance_method,
                n_resamples=n_resamples,
                seed=seed,
            )
            for m in tested
        }

    report = BenchmarkReport(
        stages=results,
        baseline=baseline,
        measures=measure_names,
        depth=depth,
        n_queries=len(queries),
        n_evaluated=len(eval_qrels),
        n_without_relevant=n_without_relevant,
        n_without_qrels=n_without_qrels,
        significance_method=significance_method,
        n_resamples=n_resamples,
        seed=seed,
        latency_queries=min(latency_queries, len(queries)),
        batch_size=batch_size,
        out_dir=str(out),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        extra=dict(extra or {}),
        environment=_environment(),
    )
    if write:
        from shopsearch.benchmarks.report import write_report

        write_report(report, out)
    return report
