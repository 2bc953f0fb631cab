"""Full query latency through the search engine, per stage, one query at a time.

Opens an index with ``SearchEngine.open`` and runs ``engine.search(query, k)`` for ``--n``
real queries, one call per query (the latency a shopper sees), and reports p50/p95/p99 of the
total and of every stage in ``result.timings_ms`` (filters, analysis, bm25, encode_query,
dense_search, fusion, rerank, total; stages an index does not have are absent).

The variants are measured side by side, interleaved query by query after a warm-up so machine
noise hits them alike:

* ``full``: the engine as opened (hybrid when the index has a dense part, else BM25 only);
* ``+ rerank``: the same with the cross-encoder, when ``--reranker`` is given or the index
  stores one (each query reranks its top ``rerank_top`` = 50 fused candidates);
* ``BM25 only``: the same index opened with ``load_encoder=False``, when it has a dense part,
  to show what the dense stages cost.

    search-cli build-index --catalog ../shared/data/homedepot/products.jsonl \\
        --index /tmp/hd-bm25 --no-dense
    python benchmarks/query_latency.py --index /tmp/hd-bm25 \\
        --queries ../shared/data/homedepot/queries.dev.tsv --n 200
    python benchmarks/query_latency.py --index /tmp/hd-minilm --reranker DIR     # with rerank
    python benchmarks/query_latency.py --index /tmp/hd-bm25 --n 5 --warmup 1     # smoke run
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from shopsearch.benchmarks.machine import describe_machine
from shopsearch.benchmarks.trec import read_queries

QUERIES = (
    Path(__file__).resolve().parent.parent.parent
    / "shared"
    / "data"
    / "homedepot"
    / "queries.dev.tsv"
)
STAGE_ORDER = (
    "filters",
    "analysis",
    "bm25",
    "encode_query",
    "dense_search",
    "fusion",
    "rerank",
    "total",
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def open_variants(args: argparse.Namespace) -> list[tuple[str, Any]]:
    from shopsearch.engine import SearchEngine

    base = SearchEngine.open(args.index, use_reranker=False)
    has_dense = base.encoder is not None
    variants = [("hybrid" if has_dense else "BM25 only (no dense part)", base)]
    reranked = None
    if args.reranker is not None or base.index.reranker_path is not None:
        if not args.no_rerank:
            reranked = SearchEngine.open(args.index, reranker=args.reranker, use_reranker=True)
    if reranked is not None and reranked.reranker is not None:
        variants.append((variants[0][0] + " + rerank", reranked))
    if has_dense:
        variants.append(
            (
                "BM25 only (load_encoder=False)",
                SearchEngine.open(args.index, use_reranker=False, load_encoder=False),
            )
        )
    return variants


def percentile_rows(name: str, timings: list[dict[str, float]]) -> list[tuple[Any, ...]]:
    rows = []
    stages = [s for s in STAGE_ORDER if any(s in t for t in timings)]
    stages += sorted({s for t in timings for s in t} - set(stages))
    for stage in stages:
        values = np.asarray([t[stage] for t in timings if stage in t])
        rows.append(
            (name, stage, len(values), *np.percentile(values, [50, 95, 99]), float(values.mean()))
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Smoke run: --index /tmp/hd-bm25 --n 5 --warmup 1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--index", type=Path, required=True, help="index folder")
    parser.add_argument(
        "--queries",
        type=Path,
        default=QUERIES,
        help="query TSV (query_id<TAB>query); default Home Depot dev queries",
    )
    parser.add_argument("--n", type=int, default=200, help="timed queries (default 200)")
    parser.add_argument(
        "--warmup", type=int, default=10, help="warm-up queries per variant, not timed (default 10)"
    )
    parser.add_argument("--k", type=int, default=10, help="results per query")
    parser.add_argument(
        "--reranker",
        default=None,
        help="cross-encoder folder (default: the one stored in the index, if any)",
    )
    parser.add_argument("--no-rerank", action="store_true", help="skip the reranked variant")
    parser.add_argument(
        "--threads",
        default="2",
        help="torch and FAISS threads per search; a comma list (e.g. 1,2) "
        "times every variant at each count, switched before each call "
        "(default 2). On a busy machine a second thread can cost more "
        "than it gains: each parallel region waits for a free core",
    )
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import faiss
    import torch

    thread_counts = [int(x) for x in args.threads.split(",")]
    torch.set_num_threads(thread_counts[0])
    faiss.omp_set_num_threads(thread_counts[0])
    queries = list(read_queries(args.queries).values())
    if len(queries) < args.n + args.warmup:
        parser.error(f"{args.queries} has {len(queries)} queries; need --n + --warmup")
    warm, timed = queries[: args.warmup], queries[args.warmup : args.warmup + args.n]

    log(f"opening {args.index}")
    engines = open_variants(args)
    # (name, engine, threads): with several thread counts every engine is timed at each.
    variants = [
        (name if len(thread_counts) == 1 else f"{name} [{n} thr]", engine, n)
        for n in thread_counts
        for name, engine in engines
    ]
    for name, _, _ in variants:
        log(f"variant: {name}")

    def run(engine: Any, query: str, threads: int) -> Any:
        if len(thread_counts) > 1:
            torch.set_num_threads(threads)
            faiss.omp_set_num_threads(threads)
        return engine.search(query, k=args.k)

    for query in warm:
        for _, engine, n in variants:
            run(engine, query, n)
    log(f"timing {len(timed)} queries x {len(variants)} variants")
    timings: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in variants}
    wall: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    for i, query in enumerate(timed):
        for j in range(len(variants)):
            name, engine, n = variants[(i + j) % len(variants)]
            t0 = time.perf_counter()
            result = run(engine, query, n)
            wall[name].append((time.perf_counter() - t0) * 1000)
            timings[name].append(dict(result.timings_ms))
        if (i + 1) % 50 == 0:
            log(f"{i + 1} / {len(timed)} queries")

    rows = []
    for name, _, _ in variants:
        rows.extend(percentile_rows(name, timings[name]))
        rows.extend(percentile_rows(name, [{"wall (search() call)": w} for w in wall[name]]))

    base_engine = engines[0][1]
    manifest = base_engine.index.manifest
    encoder = (manifest.encoder or {}).get("name") if manifest.encoder else None
    faiss_factory = (manifest.faiss or {}).get("factory") if manifest.faiss else None
    print("\n| variant | stage | n | p50 ms | p95 ms | p99 ms | mean ms |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, stage, n, p50, p95, p99, mean in rows:
        print(f"| {name} | {stage} | {n} | {p50:.2f} | {p95:.2f} | {p99:.2f} | {mean:.2f} |")
    print(f"\nmachine: {describe_machine()}")
    reranker_name = next(
        (getattr(e.reranker, "name", "?") for _, e in engines if e.reranker is not None), None
    )
    print(
        f"index {args.index}: {len(base_engine.index.products):,} products, encoder "
        f"{encoder or 'none'}, FAISS {faiss_factory or 'none'}, reranker "
        f"{reranker_name or 'none'}; {len(timed)} queries from {args.queries.name} one at a "
        f"time, k={args.k}, candidate depth {base_engine.depth}, rerank top "
        f"{base_engine.blend.top}; "
        f"variants interleaved after {len(warm)} warm-up queries; torch and FAISS threads "
        f"{args.threads}"
    )


if __name__ == "__main__":
    main()
