"""BM25 query speed: shopsearch's sparse BM25 vs rank-bm25 vs bm25s, side by side in one run.

Synthetic catalogues of 10k / 100k / 1M "titles" are drawn from real vocabularies (Home Depot
titles for English, Taobao queries segmented by our analyser for Chinese) with Zipfian term
frequencies, so posting-list lengths look like a real catalogue's. All three libraries get the
same token lists; we time scoring + top-10 per single query (the latency a shopper sees).

    python benchmarks/bm25_speed.py                       # 10k and 100k, en and zh
    python benchmarks/bm25_speed.py --sizes 10000,100000,1000000 --rank-bm25-max 100000
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

from shopsearch.benchmarks.machine import describe_machine
from shopsearch.retrieval.analysis import Analyzer
from shopsearch.retrieval.bm25 import BM25Index

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def vocabulary(language: str, data: Path, limit: int = 20000) -> list[str]:
    analyzer = Analyzer()
    counts: dict[str, int] = {}
    if language == "en":
        with (data / "homedepot" / "products.jsonl").open(encoding="utf-8") as handle:
            texts = [json.loads(line)["title"] for line in handle]
    else:
        from shopsearch.benchmarks.trec import read_queries

        texts = list(read_queries(data / "taobao_queries" / "train.query.tsv").values())[:50000]
    for text in texts:
        for term in analyzer.tokenize(text):
            counts[term] = counts.get(term, 0) + 1
    return [t for t, _ in sorted(counts.items(), key=lambda kv: -kv[1])][:limit]


def synthetic(
    vocab: list[str], n_docs: int, n_queries: int, seed: int = 0
) -> tuple[list[list[str]], list[list[str]]]:
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, len(vocab) + 1)
    p = 1.0 / ranks**1.05
    p /= p.sum()
    lengths = rng.integers(6, 16, size=n_docs)
    ids = rng.choice(len(vocab), size=int(lengths.sum()), p=p)
    docs, start = [], 0
    for length in lengths:
        docs.append([vocab[i] for i in ids[start : start + length]])
        start += length
    # Queries mix head and torso terms, as shopper queries do.
    queries = [
        [vocab[int(i)] for i in rng.choice(len(vocab) // 4, size=int(rng.integers(2, 5)))]
        for _ in range(n_queries)
    ]
    return docs, queries


def time_per_query(search, queries) -> float:
    search(queries[0])
    started = time.perf_counter()
    for q in queries:
        search(q)
    return (time.perf_counter() - started) / len(queries) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--languages", default="en,zh")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--rank-bm25-queries",
        type=int,
        default=20,
        help="rank-bm25 scores every document per query, so fewer queries.",
    )
    parser.add_argument(
        "--rank-bm25-max",
        type=int,
        default=100000,
        help="Skip rank-bm25 above this many documents (build takes minutes).",
    )
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()

    import bm25s
    import rank_bm25

    rows = []
    for language in args.languages.split(","):
        vocab = vocabulary(language, args.data)
        for size in (int(s) for s in args.sizes.split(",")):
            docs, queries = synthetic(vocab, size, args.queries, seed=size)
            t0 = time.perf_counter()
            ours = BM25Index.build(docs)
            build_ours = time.perf_counter() - t0
            ms_ours = time_per_query(lambda q, ours=ours: ours.top_k(q, 10), queries)

            t0 = time.perf_counter()
            other = bm25s.BM25()
            other.index(docs, show_progress=False)
            build_bm25s = time.perf_counter() - t0
            ms_bm25s = time_per_query(
                lambda q, other=other: other.retrieve([q], k=10, show_progress=False), queries
            )

            ms_rank = build_rank = float("nan")
            if size <= args.rank_bm25_max:
                t0 = time.perf_counter()
                reference = rank_bm25.BM25Okapi(docs)
                build_rank = time.perf_counter() - t0
                few = queries[: args.rank_bm25_queries]
                ms_rank = time_per_query(
                    lambda q, reference=reference: np.argpartition(-reference.get_scores(q), 10)[
                        :10
                    ],
                    few,
                )
            rows.append(
                (language, size, ms_ours, ms_bm25s, ms_rank, build_ours, build_bm25s, build_rank)
            )
            print(f"done {language} {size}", flush=True)

    print(
        "\n| lang | products | shopsearch ms/query | bm25s ms/query | rank-bm25 ms/query "
        "| rank-bm25 / shopsearch | bm25s / shopsearch | build s (ours / bm25s / rank-bm25) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for lang, size, ms, b2, rank, bo, bb, br in rows:
        print(
            f"| {lang} | {size:,} | {ms:.2f} | {b2:.2f} | {rank:.1f} | {rank / ms:.0f}x "
            f"| {b2 / ms:.2f}x | {bo:.1f} / {bb:.1f} / {br:.1f} |"
        )
    print(f"\nmachine: {describe_machine()}")
    print(
        f"queries: {args.queries} per size (rank-bm25: {args.rank_bm25_queries}), top-10, "
        f"single-query calls, same token lists for all three"
    )


if __name__ == "__main__":
    random.seed(0)
    main()
