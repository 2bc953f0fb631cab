"""Full query latency through the search engine, per stage, one query at a time, with the
ranking quality of each variant measured on the same queries in the same run.

Opens an index with ``SearchEngine.open`` once per *variant* and runs ``engine.search(query,
k)`` for every query (the latency a shopper sees); reports p50/p95/p99 of the total and of
every step in ``result.timings_ms`` (analysis, bm25, encode_query, dense_search, fusion,
rerank, total), and, with judgements, nDCG@10 / MRR@10 of the served top 10, the change
against the first variant, and how often the top 10 is identical to the first variant's.

A variant is ``NAME=key=value,key=value`` with keys

* ``encoder``: the query tower's runtime (``torch``, ``onnx``, ``openvino``; default the
  manifest's);
* ``reranker``: ``index`` (the installed one, default), ``none``, or a reranker folder (e.g.
  one written by ``search-cli optimize-reranker --no-install``);
* ``top``: candidates reranked (default: the tuned blend's);
* ``weight``: the blend's weight on the click logit, 0 to 1 (default: the tuned blend's; 1
  ranks the reranked head by click probability alone, which shows a runtime's effect on
  ranking even where the tuned blend leans on the fused score);
* ``threads``: torch/FAISS/ONNX Runtime/OpenVINO threads for this variant (default 1).

Every variant with a reranker uses the index's tuned blend, so variants differ only in what
their keys say. Variants run interleaved query by query after a warm-up, so machine noise hits
them alike. Caches are off for the timed table (each query is timed cold); ``--replay N``
then replays a head-heavy stream (N searches drawn Zipf-like from the queries, as shop traffic
repeats its head queries) through one variant (``--replay-variant``) with caches off and on
and prints latency and hit rates.

    python benchmarks/query_latency.py --index hd-index \\
        --queries ../shared/data/homedepot/queries.dev.tsv \\
        --qrels ../shared/data/homedepot/qrels.dev.txt \\
        --variant "torch fp32=encoder=torch,reranker=hd-index-reranker-torch" \\
        --variant "onnx int8=encoder=onnx,reranker=hd-index-reranker-onnx-int8"
    python benchmarks/query_latency.py --index /tmp/hd-bm25 --n 5 --warmup 1    # smoke run
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from shopsearch.benchmarks.machine import describe_machine
from shopsearch.benchmarks.trec import read_qrels, read_queries

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "homedepot"
STAGE_ORDER = (
    "filters",
    "analysis",
    "bm25",
    "encode_query",
    "dense_search",
    "fusion",
    "rerank",
    "ltr",
    "total",
)
VARIANT_KEYS = ("encoder", "reranker", "top", "weight", "threads")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Variant:
    name: str
    encoder: str | None = None
    reranker: str = "index"
    top: int | None = None
    weight: float | None = None
    threads: int = 1
    engine: Any = None
    timings: list[dict[str, float]] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    top10: dict[str, list[str]] = field(default_factory=dict)


def parse_variant(text: str) -> Variant:
    """``NAME=key=value,...`` (see the module docstring); a clear error for anything else."""
    name, _, spec = text.partition("=")
    if not name.strip():
        raise ValueError(f"variant {text!r}: give it a name, as NAME=key=value,...")
    variant = Variant(name.strip())
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in VARIANT_KEYS:
            raise ValueError(
                f"variant {name!r}: {part!r} is not key=value with a key of "
                + ", ".join(VARIANT_KEYS)
            )
        if key == "weight":
            try:
                variant.weight = float(value)
            except ValueError:
                raise ValueError(f"variant {name!r}: weight must be a number in [0, 1]") from None
            if not 0.0 <= variant.weight <= 1.0:
                raise ValueError(f"variant {name!r}: weight must be a number in [0, 1]")
        elif key in ("top", "threads"):
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"variant {name!r}: {key} must be a positive integer")
            setattr(variant, key, int(value))
        else:
            setattr(variant, key, value)
    return variant


def set_threads(n: int) -> None:
    import faiss
    import torch

    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)


def open_variant(index: Path, variant: Variant) -> Any:
    """The engine of one variant, with the index's tuned blend and caches off."""
    from shopsearch.engine import SearchEngine
    from shopsearch.index.manifest import Manifest
    from shopsearch.rerank.blend import BlendConfig

    set_threads(variant.threads)  # ONNX Runtime and OpenVINO take the count at load
    manifest = Manifest.read(index)
    blend = BlendConfig.from_dict((manifest.reranker or {}).get("blend"))
    if variant.top is not None:
        blend = replace(blend, top=variant.top)
    if variant.weight is not None:
        blend = replace(blend, weight=variant.weight)
    return SearchEngine.open(
        index,
        reranker=None if variant.reranker in ("index", "none") else variant.reranker,
        use_reranker=variant.reranker != "none",
        blend=blend,
        encoder_runtime=variant.encoder,
        cache_size=0,
    )


def describe(variant: Variant) -> str:
    engine = variant.engine
    encoder = getattr(engine.encoder, "runtime", "torch") if engine.encoder else "no dense"
    reranker = (
        f"{getattr(engine.reranker, 'runtime', 'torch')} top {engine.blend.top}, "
        f"blend weight {engine.blend.weight:g}"
        if engine.reranker is not None
        else "none"
    )
    return f"query tower {encoder}, reranker {reranker}, {variant.threads} thread(s)"


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


def quality(
    variants: list[Variant], qrels: dict[str, dict[str, int]]
) -> list[tuple[str, float, float, float, float, float]]:
    """Per variant: nDCG@10, MRR@10, its change of nDCG@10 against the first variant with the
    paired p-value, and the share of queries whose top 10 equals the first variant's."""
    from shopsearch.benchmarks.metrics import evaluate
    from shopsearch.benchmarks.significance import paired_test

    runs = [
        {q: {pid: float(10 - i) for i, pid in enumerate(ids)} for q, ids in v.top10.items()}
        for v in variants
    ]
    judged = {q: qrels[q] for q in variants[0].top10 if q in qrels}
    results = [evaluate(judged, run, ["nDCG@10", "MRR@10"]) for run in runs]
    base_per_query = results[0][0]["nDCG@10"]
    rows = []
    for variant, (per_query, aggregate) in zip(variants, results):
        delta = aggregate["nDCG@10"] - results[0][1]["nDCG@10"]
        p = (
            paired_test(base_per_query, per_query["nDCG@10"])["p_value"]
            if variant is not variants[0]
            else 1.0
        )
        same = float(np.mean([variant.top10[q] == variants[0].top10[q] for q in variant.top10]))
        rows.append(
            (variant.name, aggregate["nDCG@10"], aggregate["MRR@10"], delta, float(p), same)
        )
    return rows


def replay(variant: Variant, index: Path, queries: list[str], n: int, seed: int = 0) -> None:
    """Caches' hit rates and latency on a head-heavy stream (Zipf s=1 over query ranks)."""
    from shopsearch.retrieval.cache import DEFAULT_CACHE_SIZE

    rng = np.random.default_rng(seed)
    ranks = np.arange(1, len(queries) + 1, dtype=np.float64)
    stream = rng.choice(len(queries), size=n, p=(1 / ranks) / (1 / ranks).sum())
    cold = variant.engine
    warm = open_variant(index, variant)
    warm.results = type(warm.results)(DEFAULT_CACHE_SIZE)
    from shopsearch.retrieval.cache import CachedQueryEncoder

    if warm.encoder is not None:
        # Re-wrap the dense stage's encoder: open_variant asked for no caches.
        cached = CachedQueryEncoder(warm.encoder, DEFAULT_CACHE_SIZE)
        warm.encoder = cached
        warm.stages["dense"].encoder = cached
    times: dict[str, list[float]] = {"no cache": [], "caches": []}
    set_threads(variant.threads)
    for i in stream:
        for label, engine in (("no cache", cold), ("caches", warm)):
            t0 = time.perf_counter()
            engine.search(queries[i], k=10)
            times[label].append((time.perf_counter() - t0) * 1000)
    distinct = len(set(stream.tolist()))
    print(
        f"\nReplay of {n} searches drawn Zipf-like (s=1) from {len(queries)} queries "
        f"({distinct} distinct), variant {variant.name}, caches of {DEFAULT_CACHE_SIZE} entries:"
    )
    print("\n| | p50 ms | p95 ms | p99 ms | mean ms |")
    print("|---|---:|---:|---:|---:|")
    for label, values in times.items():
        p50, p95, p99 = np.percentile(values, [50, 95, 99])
        print(f"| {label} | {p50:.2f} | {p95:.2f} | {p99:.2f} | {np.mean(values):.2f} |")
    for name, stats in warm.cache_stats().items():
        print(
            f"- {name} cache: hit rate {stats['hit_rate']:.1%} "
            f"({stats['hits']} hits, {stats['misses']} misses, {stats['entries']} entries)"
        )


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
        default=DATA / "queries.dev.tsv",
        help="query TSV (query_id<TAB>query); default Home Depot dev queries",
    )
    parser.add_argument(
        "--qrels",
        type=Path,
        default=None,
        help="judgements (TREC qrels) for nDCG@10 of each variant; with them only judged "
        "queries are timed",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="the 54 hand-written demo queries (Chinese and English) and their judgements, "
        "for an index of the built-in demo catalogue (instead of --queries/--qrels)",
    )
    parser.add_argument("--n", type=int, default=0, help="timed queries (default: all)")
    parser.add_argument(
        "--warmup", type=int, default=10, help="warm-up queries per variant, not timed (default 10)"
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=key=value,...",
        help="a variant to time (repeatable; keys: " + ", ".join(VARIANT_KEYS) + "); default: "
        "the index as served, at 1 thread",
    )
    parser.add_argument(
        "--replay",
        type=int,
        default=0,
        metavar="N",
        help="then replay N head-heavy searches through one variant, caches on and off",
    )
    parser.add_argument(
        "--replay-variant", default=None, help="the variant --replay uses (default: the first)"
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        variants = [parse_variant(v) for v in args.variant] or [Variant("as served")]
    except ValueError as exc:
        parser.error(str(exc))
    if len({v.name for v in variants}) != len(variants):
        parser.error("variant names must differ")

    qrels: dict[str, dict[str, int]] | None
    if args.demo:
        from shopsearch.demo.catalog import generate_catalog
        from shopsearch.demo.queries import demo_qrels, demo_queries

        queries, qrels = dict(demo_queries()), demo_qrels(generate_catalog())
        args.queries = Path("demo queries")
    else:
        queries = read_queries(args.queries)
        qrels = read_qrels(args.qrels) if args.qrels else None
    if qrels is not None:
        queries = {q: text for q, text in queries.items() if q in qrels}
    items = list(queries.items())
    if len(items) <= args.warmup:
        parser.error(f"{args.queries} has {len(items)} usable queries; need more than --warmup")
    warm, timed = items[: args.warmup], items[args.warmup :]
    if args.n:
        timed = timed[: args.n]

    for variant in variants:
        log(f"opening {variant.name}")
        variant.engine = open_variant(args.index, variant)
        log(f"  {describe(variant)}")

    def run(variant: Variant, query: str) -> Any:
        set_threads(variant.threads)
        return variant.engine.search(query, k=10)

    for _, query in warm:
        for variant in variants:
            run(variant, query)
    log(f"timing {len(timed)} queries x {len(variants)} variants")
    for i, (qid, query) in enumerate(timed):
        for j in range(len(variants)):
            variant = variants[(i + j) % len(variants)]
            t0 = time.perf_counter()
            result = run(variant, query)
            variant.wall.append((time.perf_counter() - t0) * 1000)
            variant.timings.append(dict(result.timings_ms))
            variant.top10[qid] = [h.product_id for h in result.hits]
        if (i + 1) % 200 == 0:
            log(f"{i + 1} / {len(timed)} queries")

    print("\n| variant | stage | n | p50 ms | p95 ms | p99 ms | mean ms |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for variant in variants:
        for name, stage, n, p50, p95, p99, mean in percentile_rows(variant.name, variant.timings):
            print(f"| {name} | {stage} | {n} | {p50:.2f} | {p95:.2f} | {p99:.2f} | {mean:.2f} |")

    print(
        "\n| variant | p50 ms | p95 ms | p99 ms |"
        + (" nDCG@10 | MRR@10 | ΔnDCG@10 | p | same top 10 |" if qrels else "")
    )
    print("|---|---:|---:|---:|" + ("---:|---:|---:|---:|---:|" if qrels else ""))
    scores = {row[0]: row for row in quality(variants, qrels)} if qrels else {}
    for variant in variants:
        p50, p95, p99 = np.percentile(variant.wall, [50, 95, 99])
        line = f"| {variant.name} | {p50:.1f} | {p95:.1f} | {p99:.1f} |"
        if qrels:
            _, ndcg, mrr, delta, p, same = scores[variant.name]
            line += f" {ndcg:.4f} | {mrr:.4f} | {delta:+.4f} | {p:.3f} | {same:.1%} |"
        print(line)

    print(f"\nmachine: {describe_machine()}")
    manifest = variants[0].engine.index.manifest
    print(
        f"index {args.index}: {manifest.products:,} products, encoder "
        f"{(manifest.encoder or {}).get('name', 'none')}, FAISS "
        f"{(manifest.faiss or {}).get('factory', 'none')}, candidate depth "
        f"{variants[0].engine.depth}; {len(timed)} queries from {args.queries.name} one at a "
        f"time, k=10, interleaved after {len(warm)} warm-up queries; wall = the search() call"
    )
    for variant in variants:
        print(f"- {variant.name}: {describe(variant)}")
    if args.replay:
        chosen = [v for v in variants if v.name == (args.replay_variant or variants[0].name)]
        if not chosen:
            parser.error(f"--replay-variant {args.replay_variant!r} is not a variant's name")
        replay(chosen[0], args.index, [q for _, q in items], args.replay)


if __name__ == "__main__":
    main()
