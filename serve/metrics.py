"""The server's Prometheus metrics (prometheus-client, the reference Python client).

Traffic metrics (requests, per-step latency histograms, errors, zero-result searches, requests
in flight, shed load, reloads) are counted by the worker that served them; with several
workers they live in ``PROMETHEUS_MULTIPROC_DIR`` (set by ``search-cli serve --workers N``)
and ``/metrics`` sums them. Online quality (CTR@k, MRR of clicks, position-corrected ECE of
the served click probabilities) is computed at scrape time from the shared feedback database,
so every worker reports the same figures.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from shopsearch.serve.quality import online_quality

# Per-step latency buckets, seconds: a BM25 lookup takes tens of microseconds, a cross-encoder
# pass over 50 candidates a few hundred milliseconds.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
# Steps as the pipeline times them (retrieval.timing), under the names a dashboard uses.
STEP_NAMES = {
    "analysis": "analysis",
    "bm25": "bm25",
    "encode_query": "encode",
    "dense_search": "dense",
    "filters": "filters",
    "fusion": "fusion",
    "rerank": "rerank",
    "total": "total",
}
QUALITY_KS = (1, 5, 10)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class ServerMetrics:
    """One server's metric objects, registered on their own registry (so tests can run
    several apps in one process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "shopsearch_http_requests",
            "HTTP requests by endpoint and status code.",
            ["endpoint", "status"],
            registry=r,
        )
        self.step_latency = Histogram(
            "shopsearch_search_step_seconds",
            "Time per pipeline step of a served search (total = the whole pipeline).",
            ["step"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.searches = Counter(
            "shopsearch_searches", "Searches served, by pipeline stage.", ["stage"], registry=r
        )
        self.zero_results = Counter(
            "shopsearch_zero_result_searches",
            "Searches that returned no product (zero-result rate = this / searches).",
            registry=r,
        )
        self.errors = Counter(
            "shopsearch_errors", "Refused or failed requests, by type.", ["type"], registry=r
        )
        self.in_flight = Gauge(
            "shopsearch_in_flight_requests",
            "Search requests being answered or waiting for a slot.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.shed = Counter(
            "shopsearch_shed_requests",
            "Searches refused with 503 because the queue was full or the wait too long.",
            registry=r,
        )
        self.events = Counter(
            "shopsearch_feedback_events",
            "Click and purchase events recorded.",
            ["type"],
            registry=r,
        )
        self.reloads = Counter(
            "shopsearch_engine_reloads", "Engine (re)loads, by outcome.", ["outcome"], registry=r
        )
        self.result_cache = Counter(
            "shopsearch_result_cache_lookups",
            "Searches looked up in the engine's result cache, by outcome (hit rate = hit / all).",
            ["outcome"],
            registry=r,
        )

    def observe_search(self, stage: str, timings_ms: dict[str, float], results: int) -> None:
        self.searches.labels(stage).inc()
        self.result_cache.labels("hit" if "result_cache" in timings_ms else "miss").inc()
        if results == 0:
            self.zero_results.inc()
        for step, ms in timings_ms.items():
            self.step_latency.labels(STEP_NAMES.get(step, step)).observe(ms / 1000.0)


class OnlineQualityCollector:
    """Prometheus gauges computed when scraped, over the last ``window`` requests whose
    feedback window has closed (the click log's latest rows)."""

    def __init__(self, store: Any, propensities: Callable[[], np.ndarray], window: int) -> None:
        self.store = store
        self.propensities = propensities
        self.window = window

    def compute(self) -> Any:
        requests, rows = self.store.settled(self.window)
        return online_quality(
            [r.request_id for r in rows],
            np.array([r.position for r in rows], dtype=np.int64),
            np.array([r.clicked for r in rows], dtype=bool),
            [r.probability for r in rows],
            self.propensities(),
            QUALITY_KS,
            requests=requests,
        )

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        quality = self.compute()
        ctr = GaugeMetricFamily(
            "shopsearch_online_ctr",
            "Share of settled requests with a click at rank <= k.",
            labels=["k"],
        )
        for k, value in quality.ctr.items():
            ctr.add_metric([str(k)], value)
        yield ctr
        yield GaugeMetricFamily(
            "shopsearch_online_mrr",
            "Mean reciprocal rank of the first click over settled requests.",
            value=quality.mrr,
        )
        yield GaugeMetricFamily(
            "shopsearch_online_calibration_ece",
            "Expected calibration error of served click probabilities against observed "
            "clicks, position-corrected with the propensities (NaN with no reranked rows).",
            value=float("nan") if quality.ece is None else quality.ece,
        )
        yield GaugeMetricFamily(
            "shopsearch_online_window_requests",
            "Settled requests the online quality gauges are computed over.",
            value=quality.requests,
        )


def render(metrics: ServerMetrics, quality: OnlineQualityCollector) -> tuple[bytes, str]:
    """The /metrics body and content type: this worker's (or, with several workers, every
    worker's) traffic metrics plus the online quality gauges."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    if multiprocess_dir():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        body = generate_latest(registry)
    else:
        body = generate_latest(metrics.registry)
    quality_registry = CollectorRegistry()
    quality_registry.register(quality)
    return body + generate_latest(quality_registry), CONTENT_TYPE_LATEST
