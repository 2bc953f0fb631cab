"""Dense search speed: FAISS exact (IDMap,Flat) vs approximate (IDMap,HNSW32,Flat), side by side.

Both indexes are built with shopsearch's own ``build_faiss_index`` and searched with its own
``search_index`` (inner product over L2-normalised vectors, the project's convention). The
catalogue is synthetic but shaped like sentence embeddings rather than uniform noise: 384-d
vectors drawn from a mixture of Gaussian clusters (``--clusters`` centres plus isotropic noise,
then normalised), and queries are catalogue vectors perturbed by more noise, so a query's
nearest neighbours are spread over its cluster rather than being one planted copy.

Per catalogue size it reports: build time of each index; single-query latency p50/p99 for
Flat and for HNSW at efSearch 64 and 128 (the variants are interleaved query by query, after
a warm-up, so machine noise hits them alike); batch throughput (``--batch`` queries per call,
median of ``--batch-repeats`` alternating calls); Recall@10 of HNSW against exact Flat; index
size (``faiss.serialize_index``); and a filtered-search row where ``allowed_rows`` is a random
10% of the catalogue (FAISS ID selector, as the engine does), with recall against filtered
exact search. Under the table, the mean exact cosine of neighbours #1, #10 and #100 shows how
flat each catalogue's neighbourhoods are: the flatter (near-ties), the harder Recall@10 is for
HNSW, and the less a miss matters to a shopper.

``--real-index DIR`` adds a catalogue of real embeddings: the vectors stored in a shopsearch
index built with a model, queried with ``--real-queries`` encoded by that index's encoder.

    python benchmarks/dense_speed.py                               # 100k and 1M (1M: ~20+ min)
    python benchmarks/dense_speed.py --sizes 100000
    python benchmarks/dense_speed.py --sizes '' --real-index /tmp/hd-minilm \\
        --real-queries ../shared/data/homedepot/queries.dev.tsv
    python benchmarks/dense_speed.py --sizes 5000 --queries 50 --batch-repeats 1   # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from shopsearch.benchmarks.machine import describe_machine
from shopsearch.retrieval.dense import (
    APPROXIMATE_FACTORY,
    EXACT_FACTORY,
    build_faiss_index,
    search_index,
)

DIM = 384
K = 10
EF_VALUES = (64, 128)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def mixture_vectors(
    n: int, centres: np.ndarray, noise: float, rng: np.random.Generator, chunk: int = 100_000
) -> np.ndarray:
    """``n`` unit vectors, shape ``(n, dim)`` float32: a random centre plus Gaussian noise whose
    expected norm is ``noise`` (the centres have norm 1), normalised. Built in chunks so the
    float64 temporaries stay small at 1M rows."""
    n_centres, dim = centres.shape
    out = np.empty((n, dim), dtype=np.float32)
    sigma = noise / np.sqrt(dim)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        assign = rng.integers(0, n_centres, size=stop - start)
        block = centres[assign] + rng.standard_normal((stop - start, dim), dtype=np.float32) * sigma
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:stop] = block
    return out


def perturbed_queries(
    catalogue: np.ndarray, n: int, noise: float, rng: np.random.Generator
) -> np.ndarray:
    """``n`` catalogue rows plus noise of expected norm ``noise``, normalised; ``(n, dim)``."""
    rows = rng.choice(len(catalogue), size=n, replace=False)
    q = catalogue[rows] + rng.standard_normal((n, catalogue.shape[1]), dtype=np.float32) * (
        noise / np.sqrt(catalogue.shape[1])
    )
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / |truth| (truth rows of -1 are ignored)."""
    total = 0.0
    for f, t in zip(found, truth):
        t_set = {int(x) for x in t if x >= 0}
        if t_set:
            total += len(t_set & {int(x) for x in f}) / len(t_set)
    return total / len(found)


@dataclass
class Variant:
    name: str
    search: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    single_ms: list[float] = field(default_factory=list)
    batch_s: list[float] = field(default_factory=list)


def interleaved_single(variants: list[Variant], queries: np.ndarray, warmup: int) -> None:
    """Time one query per call for each variant, rotating which variant goes first."""
    for q in queries[:warmup]:
        for v in variants:
            v.search(q[None, :])
    clock = time.perf_counter
    for i, q in enumerate(queries):
        one = q[None, :]
        for j in range(len(variants)):
            v = variants[(i + j) % len(variants)]
            t0 = clock()
            v.search(one)
            v.single_ms.append((clock() - t0) * 1000)


def interleaved_batch(variants: list[Variant], batch: np.ndarray, repeats: int) -> None:
    for v in variants:  # warm-up
        v.search(batch[: max(1, len(batch) // 8)])
    for r in range(repeats):
        for j in range(len(variants)):
            v = variants[(r + j) % len(variants)]
            t0 = time.perf_counter()
            v.search(batch)
            v.batch_s.append(time.perf_counter() - t0)


@contextlib.contextmanager
def omp_threads(n: int) -> Iterator[None]:
    """FAISS's OpenMP thread count inside the block. A single query gains nothing from a
    second thread, and on a shared machine the idle thread's wait for a time slice costs a
    scheduler tick (~20 ms) per call, so single-query latency is timed with one thread."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def index_bytes(index: Any) -> int:
    import faiss

    try:
        return int(faiss.serialize_index(index).size)
    except (RuntimeError, MemoryError):
        return int(index.ntotal) * DIM * 4


def synthetic_catalogue(size: int, args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """Mixture-of-Gaussians catalogue ``(size, 384)`` and perturbed-row queries."""
    rng = np.random.default_rng(size)
    centres = rng.standard_normal((args.clusters, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    log(f"{size:,}: generating vectors")
    vectors = mixture_vectors(size, centres, args.noise, rng)
    n_total = args.queries + args.warmup + args.recall_queries
    return vectors, perturbed_queries(vectors, min(n_total, size), args.query_noise, rng)


def real_catalogue(
    index_dir: str, queries_path: str | None, args: argparse.Namespace
) -> tuple[np.ndarray, np.ndarray]:
    """The vectors stored in a shopsearch index's FAISS file, and query vectors: the given
    queries encoded with the index's own encoder, else perturbed catalogue rows."""
    import faiss

    from shopsearch.index.store import load_index

    index = load_index(index_dir)
    if index.manifest.faiss is None:
        raise SystemExit(f"{index_dir} has no dense part; build it with a --model")
    from shopsearch.retrieval.dense import SegmentedDenseIndex

    def stored_vectors(stored: Any) -> np.ndarray:
        inner = faiss.downcast_index(stored.index) if hasattr(stored, "index") else stored
        return inner.reconstruct_n(0, inner.ntotal).astype(np.float32)

    stored = index.faiss_index
    if isinstance(stored, SegmentedDenseIndex):  # an HNSW index not compacted since updates
        dim = int((index.manifest.encoder or {})["dim"])
        vectors = np.zeros((stored.ntotal, dim), np.float32)
        for part, rows in stored.parts:
            live = rows >= 0
            vectors[rows[live]] = stored_vectors(part)[live]
    else:
        vectors = stored_vectors(stored)
    if queries_path is None:
        rng = np.random.default_rng(0)
        n_total = args.queries + args.warmup + args.recall_queries
        return vectors, perturbed_queries(
            vectors, min(n_total, len(vectors)), args.query_noise, rng
        )
    from shopsearch.benchmarks.trec import read_queries
    from shopsearch.index.encoder import load_index_encoder

    texts = list(read_queries(queries_path).values())
    log(f"encoding {len(texts)} queries with the index's encoder")
    queries = load_index_encoder(index).encode_queries(texts)
    return vectors, np.ascontiguousarray(queries, dtype=np.float32)


def run_catalogue(
    label: str, vectors: np.ndarray, queries: np.ndarray, args: argparse.Namespace
) -> tuple[list[tuple[Any, ...]], str]:
    """Table rows for one catalogue, and a note on how flat its exact neighbourhoods are."""
    size = len(vectors)
    rng = np.random.default_rng(size + 1)
    single = queries[: args.queries + args.warmup]
    if len(single) < args.warmup + 1:
        single = queries
    recall_q = queries[-args.recall_queries :]
    batch = (
        recall_q[: args.batch]
        if len(recall_q) >= args.batch
        else np.resize(recall_q, (args.batch, queries.shape[1]))
    )

    t0 = time.perf_counter()
    flat = build_faiss_index(vectors, EXACT_FACTORY)
    build_flat = time.perf_counter() - t0
    log(f"{label}: Flat built in {build_flat:.1f} s; building HNSW32 (slow at 1M)")
    t0 = time.perf_counter()
    hnsw = build_faiss_index(vectors, APPROXIMATE_FACTORY)
    build_hnsw = time.perf_counter() - t0
    log(f"{label}: HNSW built in {build_hnsw:.1f} s")
    bytes_flat, bytes_hnsw = index_bytes(flat), index_bytes(hnsw)

    def make(
        index: Any, ef: int, allowed: np.ndarray | None = None
    ) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
        return lambda q: search_index(index, q, K, allowed, ef_search=ef)

    variants = [Variant("Flat (exact)", make(flat, 0))] + [
        Variant(f"HNSW32 ef={ef}", make(hnsw, ef)) for ef in EF_VALUES
    ]
    log(
        f"{label}: single-query latency, {len(single) - args.warmup} queries x "
        f"{len(variants)} variants"
    )
    with omp_threads(args.single_threads):
        interleaved_single(variants, single[args.warmup :], args.warmup)
    log(f"{label}: batch throughput, batch {args.batch} x {args.batch_repeats}")
    interleaved_batch(variants, batch, args.batch_repeats)
    deep_rows, deep_scores = search_index(flat, recall_q, 100)
    truth = deep_rows[:, :K]
    note = (
        f"{label}: exact cosine of neighbour #1 / #10 / #100, mean over queries: "
        f"{deep_scores[:, 0].mean():.3f} / {deep_scores[:, K - 1].mean():.3f} / "
        f"{deep_scores[:, -1].mean():.3f}"
    )
    recalls = [1.0] + [
        recall_at_k(search_index(hnsw, recall_q, K, ef_search=ef)[0], truth) for ef in EF_VALUES
    ]

    # Filtered search: 10% of the catalogue allowed, selector built per call as in the engine.
    allowed = np.sort(rng.choice(size, size=max(K, size // 10), replace=False)).astype(np.int64)
    filtered = [Variant("Flat (exact), 10% allowed", make(flat, 0, allowed))] + [
        Variant(f"HNSW32 ef={ef}, 10% allowed", make(hnsw, ef, allowed)) for ef in EF_VALUES
    ]
    n_filtered = min(len(single) - args.warmup, args.filtered_queries)
    log(f"{label}: filtered single-query latency, {n_filtered} queries")
    with omp_threads(args.single_threads):
        interleaved_single(
            filtered, single[args.warmup : args.warmup + n_filtered], min(args.warmup, 5)
        )
    f_queries = recall_q[: args.filtered_queries]
    f_truth, _ = search_index(flat, f_queries, K, allowed)
    f_recalls = [1.0] + [
        recall_at_k(search_index(hnsw, f_queries, K, allowed, ef_search=ef)[0], f_truth)
        for ef in EF_VALUES
    ]

    rows: list[tuple[Any, ...]] = []
    for v, rec, nbytes, build in zip(
        variants,
        recalls,
        (bytes_flat, bytes_hnsw, bytes_hnsw),
        (build_flat, build_hnsw, build_hnsw),
    ):
        ms = np.asarray(v.single_ms)
        qps = args.batch / float(np.median(v.batch_s))
        rows.append(
            (label, v.name, build, np.percentile(ms, 50), np.percentile(ms, 99), qps, rec, nbytes)
        )
    for v, rec in zip(filtered, f_recalls):
        ms = np.asarray(v.single_ms)
        rows.append(
            (label, v.name, None, np.percentile(ms, 50), np.percentile(ms, 99), None, rec, None)
        )
    log(f"{label}: done")
    return rows, note


def print_table(rows: list[tuple[Any, ...]], notes: list[str], batch: int) -> None:
    def fmt(value: float | None, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    print(
        "\n| catalogue | index | build s | p50 ms (1 query) | p99 ms (1 query) "
        f"| queries/s (batch {batch}) | Recall@10 vs Flat | index MB |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for label, name, build, p50, p99, qps, rec, nbytes in rows:
        print(
            f"| {label} | {name} | {fmt(build, '.1f')} | {p50:.2f} | {p99:.2f} "
            f"| {fmt(qps, ',.0f')} | {rec:.3f} "
            f"| {fmt(None if nbytes is None else nbytes / 2**20, ',.0f')} |",
            flush=True,
        )
    for note in notes:
        print(note, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Smoke run: --sizes 5000 --queries 50 --batch-repeats 1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--sizes",
        default="100000,1000000",
        help="comma-separated synthetic catalogue sizes (default 100000,1000000; '' for none)",
    )
    parser.add_argument(
        "--real-index",
        default=None,
        help="also benchmark the real vectors stored in this shopsearch index "
        "folder (built with a --model)",
    )
    parser.add_argument(
        "--real-queries",
        default=None,
        help="with --real-index: a query TSV to encode with the index's encoder "
        "(default: perturbed catalogue vectors, as for synthetic data)",
    )
    parser.add_argument(
        "--queries",
        type=int,
        default=300,
        help="single-query latency queries per variant (default 300)",
    )
    parser.add_argument("--warmup", type=int, default=20, help="warm-up queries per variant")
    parser.add_argument("--batch", type=int, default=256, help="batch size for throughput")
    parser.add_argument(
        "--batch-repeats",
        type=int,
        default=3,
        help="timed batch calls per variant; the median is reported",
    )
    parser.add_argument(
        "--recall-queries",
        type=int,
        default=1000,
        help="queries for Recall@10 of HNSW vs exact (default 1000)",
    )
    parser.add_argument(
        "--filtered-queries",
        type=int,
        default=100,
        help="queries for the filtered-search rows (default 100)",
    )
    parser.add_argument("--clusters", type=int, default=1000, help="Gaussian mixture centres")
    parser.add_argument(
        "--noise",
        type=float,
        default=1.0,
        help="expected norm of a catalogue vector's noise around its unit-norm "
        "centre (default 1.0: cosine to its centre ~0.7)",
    )
    parser.add_argument(
        "--query-noise",
        type=float,
        default=0.7,
        help="expected norm of the noise added to a catalogue vector to make a query (default 0.7)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="FAISS OpenMP threads for building and batch search (default 2)",
    )
    parser.add_argument(
        "--single-threads",
        type=int,
        default=1,
        help="FAISS OpenMP threads for single-query latency (default 1)",
    )
    args = parser.parse_args()

    import faiss

    faiss.omp_set_num_threads(args.threads)
    rows: list[tuple[Any, ...]] = []
    notes: list[str] = []
    catalogues: list[tuple[str, Callable[[], tuple[np.ndarray, np.ndarray]]]] = []
    if args.real_index:

        def real() -> tuple[np.ndarray, np.ndarray]:
            return real_catalogue(args.real_index, args.real_queries, args)

        catalogues.append(("real vectors", real))
    for size in (int(s) for s in args.sizes.split(",") if s.strip()):
        catalogues.append((f"{size:,}", functools.partial(synthetic_catalogue, size, args)))
    for label, load in catalogues:
        vectors, queries = load()
        if label == "real vectors":
            label = f"{len(vectors):,} (real)"
        got, note = run_catalogue(label, vectors, queries, args)
        del vectors
        rows.extend(got)
        notes.append(note)
        # Print the table so far after every catalogue, so a long run that dies leaves one.
        print_table(rows, notes, args.batch)

    print(f"\nmachine: {describe_machine()}")
    print(
        f"faiss {faiss.__version__}, {args.threads} OpenMP threads for build and batch, "
        f"{args.single_threads} for single queries; {DIM}-d unit vectors, "
        f"{args.clusters} Gaussian clusters (noise {args.noise}), queries = catalogue vectors "
        f"+ noise {args.query_noise}; {args.queries} single queries per variant interleaved "
        f"after {args.warmup} warm-up; batch median of {args.batch_repeats}; recall over "
        f"{args.recall_queries} queries (filtered: {args.filtered_queries}); HNSW32 "
        "efConstruction = FAISS default (40)"
    )


if __name__ == "__main__":
    main()
