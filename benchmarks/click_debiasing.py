"""Learning from biased clicks: does position weighting recover what judgements teach?

On Home Depot train queries we show BM25's top 10, simulate shoppers with a position-based
click model (examination (1/p)^eta, click 0.05/0.3/0.7 by grade 0/1/2, 20% of sessions with the
top 10 shuffled), and fine-tune the same cross-encoder three ways on the same queries:
from the judgements directly (the ceiling), from naive click rates, and from inverse-propensity
weighted click rates (propensities estimated by EM from the log). Each reranks BM25's top 20
for Home Depot dev queries; we report nDCG@10 / MRR@10 (trec_eval semantics) and the paired
randomisation p-value of IPW vs naive.

    python benchmarks/click_debiasing.py                        # ~30 min on 2 CPU cores
    python benchmarks/click_debiasing.py --train-queries 300 --dev-queries 100   # quick look
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from shopsearch.benchmarks.machine import describe_machine

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "homedepot"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--base-model", default="minilm")
    parser.add_argument("--work", type=Path, default=Path("click-debiasing"))
    parser.add_argument("--train-queries", type=int, default=2000)
    parser.add_argument("--dev-queries", type=int, default=400)
    parser.add_argument("--sessions-per-query", type=int, default=10)
    parser.add_argument("--eta", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rerank-depth", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from shopsearch.benchmarks.datasets import load_homedepot
    from shopsearch.benchmarks.metrics import evaluate
    from shopsearch.benchmarks.significance import paired_test
    from shopsearch.models.registry import resolve_model
    from shopsearch.rerank.cross_encoder import CrossEncoderReranker
    from shopsearch.retrieval.analysis import Analyzer
    from shopsearch.retrieval.bm25 import BM25Index
    from shopsearch.training.pipeline import (
        simulate_click_log,
        train_reranker_from_clicks,
        train_reranker_from_qrels,
    )
    from shopsearch.training.propensity import estimate_propensities_em
    from shopsearch.training.reranker import RerankerTrainingConfig
    from shopsearch.training.simulate import true_propensities

    torch.set_num_threads(2)
    started = time.perf_counter()
    train_set, dev_set = load_homedepot(args.data, "train"), load_homedepot(args.data, "dev")
    product_ids = [p["id"] for p in train_set.products]
    product_text = {p["id"]: p["title"] for p in train_set.products}
    analyzer = Analyzer()
    bm25 = BM25Index.build([analyzer.tokenize(product_text[pid]) for pid in product_ids])

    def bm25_top(texts: list[str], k: int) -> list[list[str]]:
        return [[product_ids[r] for r in bm25.top_k(analyzer.tokenize(t), k)[0]] for t in texts]

    train_ids = sorted(train_set.queries)[: args.train_queries]
    train_q = {q: train_set.queries[q] for q in train_ids}
    train_qrels = {q: train_set.qrels[q] for q in train_ids}
    shown = dict(zip(train_ids, bm25_top([train_q[q] for q in train_ids], 10)))
    log = simulate_click_log(
        shown,
        train_qrels,
        train_q,
        sessions_per_query=args.sessions_per_query,
        eta=args.eta,
        seed=args.seed,
    )
    theta = estimate_propensities_em(log)
    print(
        f"{len(log)} impressions, {sum(i.clicked for i in log)} clicks over "
        f"{len(train_ids)} train queries",
        flush=True,
    )
    print(
        "propensity by rank, true: " + " ".join(f"{x:.2f}" for x in true_propensities(10, args.eta))
    )
    print("propensity by rank, EM:   " + " ".join(f"{x:.2f}" for x in theta), flush=True)

    base = str(resolve_model(args.base_model).path or args.base_model)
    # Short pairs (Home Depot queries and titles fit in 32 tokens) and a high learning rate:
    # what lets a cross-encoder learn from a few thousand queries in minutes on a CPU.
    config = RerankerTrainingConfig(
        epochs=args.epochs, batch_size=32, learning_rate=1e-4, max_length=32, seed=args.seed
    )
    models = {
        "judgements": lambda out: train_reranker_from_qrels(
            train_q,
            train_qrels,
            product_text,
            base,
            out,
            mine_negatives=lambda t: bm25_top(t, 100),
            config=config,
            seed=args.seed,
        ),
        "clicks, naive": lambda out: train_reranker_from_clicks(
            log, product_text, base, out, config=config, position_weighting=False, seed=args.seed
        ),
        "clicks, position-weighted (IPW)": lambda out: train_reranker_from_clicks(
            log,
            product_text,
            base,
            out,
            config=config,
            position_weighting=True,
            propensities=theta,
            seed=args.seed,
        ),
    }

    dev_ids = sorted(dev_set.queries)[: args.dev_queries]
    candidates = dict(
        zip(dev_ids, bm25_top([dev_set.queries[q] for q in dev_ids], args.rerank_depth))
    )
    dev_qrels = {q: dev_set.qrels[q] for q in dev_ids}
    runs = {
        "BM25 (no rerank)": {
            q: {pid: float(len(c) - i) for i, pid in enumerate(c)} for q, c in candidates.items()
        }
    }
    timings = {}
    for n, (name, train) in enumerate(models.items()):
        t0 = time.perf_counter()
        out = args.work / f"model-{n}"
        train(out)
        timings[name] = time.perf_counter() - t0
        run = {}
        reranker = CrossEncoderReranker(out)
        for q, cands in candidates.items():
            logits = reranker.logits(dev_set.queries[q], [product_text[p] for p in cands])
            run[q] = {p: float(s) for p, s in zip(cands, logits)}
        runs[name] = run
        print(f"trained and evaluated {name} in {time.perf_counter() - t0:.0f} s", flush=True)

    results = {name: evaluate(dev_qrels, run, ["nDCG@10", "MRR@10"]) for name, run in runs.items()}
    print(f"\n| reranker trained on ({len(train_ids)} train queries) | nDCG@10 | MRR@10 |")
    print("|---|---:|---:|")
    for name, (_, agg) in results.items():
        print(f"| {name} | {agg['nDCG@10']:.4f} | {agg['MRR@10']:.4f} |")
    naive = results["clicks, naive"][0]["nDCG@10"]
    ipw = results["clicks, position-weighted (IPW)"][0]["nDCG@10"]
    test = paired_test(naive, ipw)
    judged = results["judgements"][1]["nDCG@10"]
    gap = judged - results["clicks, naive"][1]["nDCG@10"]
    closed = (
        (
            results["clicks, position-weighted (IPW)"][1]["nDCG@10"]
            - results["clicks, naive"][1]["nDCG@10"]
        )
        / gap
        if gap
        else float("nan")
    )
    print(
        f"\nIPW vs naive nDCG@10: delta {test['delta']:+.4f}, p = {test['p_value']:.4f} "
        f"(paired randomisation, {test['n']} dev queries); share of the naive-to-judgements "
        f"gap closed: {closed:.0%}"
    )
    print(
        f"dev: first {len(dev_ids)} Home Depot dev queries, BM25 top {args.rerank_depth} "
        f"reranked; base model {args.base_model}, {args.epochs} epoch(s); training seconds "
        + ", ".join(f"{k}: {v:.0f}" for k, v in timings.items())
    )
    print(f"total {time.perf_counter() - started:.0f} s; machine: {describe_machine()}")


if __name__ == "__main__":
    main()
