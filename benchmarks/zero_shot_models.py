"""Zero-shot comparison of the built-in bi-encoders (``minilm`` vs ``e5-small``), no training.

(a) **Home Depot dev** (English, graded 0/1/2): every product title is encoded with the
document tower, every dev query with the query tower; exact inner-product search (FAISS
``IndexFlatIP`` over L2-normalised vectors, i.e. cosine) returns the top 100 of the whole
catalogue. Recall@100 and nDCG@10 come from ``shopsearch.benchmarks.metrics.evaluate``
(ir-measures' pytrec_eval, trec_eval semantics): nDCG gain = the qrels grade (2 or 1), Recall
counts grade >= 1 as relevant, unjudged products are not relevant, and only queries with at
least one relevant product are averaged.

(b) **QBQTC dev** (Chinese query-title pairs, labels 0/1/2): each pair is scored by the cosine
of the query (query tower) and the title (document tower).
* ``pair acc``: over queries that have both a label-2 and a label-0 title, the fraction of all
  (label-2, label-0) title pairs of the same query ordered correctly (ties count one half);
* ``query AUC``: the same fraction computed per query, then averaged over those queries;
* ``AUC all``: ROC-AUC of the score for label 2 against label 0 over all pairs of the file
  (pooled across queries), and ``Spearman``: rank correlation of score and label over all
  pairs. Almost every QBQTC query has a single title (20,000 pairs, 18,802 queries; only 18
  queries have both a label-2 and a label-0 title), so the per-query numbers rest on about 20
  pairs and the pooled ones carry the signal.

Quick run / full run (the full one encodes ~115k texts per model: ~25 min on 2 cores):

    python benchmarks/zero_shot_models.py --limit-products 2000 --limit-queries 100
    nohup python benchmarks/zero_shot_models.py > /tmp/zero_shot.log 2>&1 &

Embeddings stay in memory; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from shopsearch.benchmarks.machine import describe_machine
from shopsearch.benchmarks.report import format_table

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
MEASURES = ("Recall@100", "nDCG@10")
DEPTH = 100


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def encode(model, texts: list[str], prompt_name: str, what: str, batch_size: int) -> np.ndarray:
    """``(n, dim)`` float32 unit vectors, encoded in chunks with progress lines."""
    chunk = 8192
    parts = []
    start = time.perf_counter()
    for i in range(0, len(texts), chunk):
        parts.append(
            model.encode(
                texts[i : i + chunk],
                prompt_name=prompt_name,
                batch_size=batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        )
        done = min(i + chunk, len(texts))
        rate = done / (time.perf_counter() - start)
        log(f"  {what}: {done}/{len(texts)} ({rate:.0f}/s)")
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 1), np.float32)


# ----------------------------------------------------------------------------- Home Depot


def load_homedepot(folder: Path, limit_products: int | None, limit_queries: int | None):
    """Products, queries and qrels; limits keep every product judged for the kept queries."""
    from shopsearch.benchmarks.datasets import load_homedepot as load

    data = load(folder, "dev")
    queries = dict(
        list(data.queries.items())[:limit_queries] if limit_queries else data.queries.items()
    )
    qrels = {q: data.qrels[q] for q in queries}
    products = data.products
    if limit_products is not None:
        judged = {pid for docs in qrels.values() for pid in docs}
        keep = [p for p in products if str(p["id"]) in judged]
        rest = [p for p in products if str(p["id"]) not in judged]
        products = keep + rest[: max(0, limit_products - len(keep))]
    return products, queries, qrels


def homedepot_scores(model, products, queries, qrels, batch_size: int) -> dict[str, float]:
    import faiss

    from shopsearch.benchmarks.metrics import evaluate

    ids = [str(p["id"]) for p in products]
    docs = encode(model, [str(p["title"]) for p in products], "document", "HD titles", batch_size)
    qids = list(queries)
    qvecs = encode(model, [queries[q] for q in qids], "query", "HD queries", batch_size)
    index = faiss.IndexFlatIP(docs.shape[1])
    index.add(docs)
    scores, rows = index.search(qvecs, min(DEPTH, len(ids)))
    run = {
        q: {ids[r]: float(s) for s, r in zip(scores[i], rows[i]) if r >= 0}
        for i, q in enumerate(qids)
    }
    _, aggregate = evaluate(qrels, run, MEASURES)
    return aggregate


# ----------------------------------------------------------------------------- QBQTC


def load_qbqtc(path: Path, limit_queries: int | None) -> list[tuple[str, str, int]]:
    """``(query, title, label)`` rows; with a limit, only the rows of the first N queries."""
    rows: list[tuple[str, str, int]] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            obj = json.loads(line)
            query = str(obj["query"])
            if limit_queries is not None and query not in seen and len(seen) >= limit_queries:
                continue
            seen.add(query)
            rows.append((query, str(obj["title"]), int(obj["label"])))
    return rows


def pairwise_order(rows: list[tuple[str, str, int]], scores: np.ndarray) -> dict[str, float]:
    """Per-query (label-2, label-0) ordering: pooled accuracy, per-query mean, counts."""
    by_query: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (query, _, label), score in zip(rows, scores):
        by_query[query][label].append(float(score))
    correct, total, per_query = 0.0, 0, []
    for labels in by_query.values():
        good, bad = labels.get(2), labels.get(0)
        if not good or not bad:
            continue
        g, b = np.asarray(good)[:, None], np.asarray(bad)[None, :]
        wins = float(np.sum(g > b) + 0.5 * np.sum(g == b))
        correct += wins
        total += g.size * b.size
        per_query.append(wins / (g.size * b.size))
    return {
        "pair_acc": correct / total if total else float("nan"),
        "query_auc": float(np.mean(per_query)) if per_query else float("nan"),
        "pairs": total,
        "queries": len(per_query),
    }


def pooled_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """P(score of a label-2 pair > score of a label-0 pair), ties one half (Mann-Whitney)."""
    from scipy.stats import rankdata

    mask = (labels == 2) | (labels == 0)
    y, s = labels[mask] == 2, scores[mask]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def qbqtc_scores(model, rows, batch_size: int) -> dict[str, float]:
    from scipy.stats import spearmanr

    queries = sorted({q for q, _, _ in rows})
    titles = sorted({t for _, t, _ in rows})
    qvec = encode(model, queries, "query", "QBQTC queries", batch_size)
    tvec = encode(model, titles, "document", "QBQTC titles", batch_size)
    qpos = {q: i for i, q in enumerate(queries)}
    tpos = {t: i for i, t in enumerate(titles)}
    qi = np.array([qpos[q] for q, _, _ in rows])
    ti = np.array([tpos[t] for _, t, _ in rows])
    scores = np.sum(qvec[qi] * tvec[ti], axis=1)
    labels = np.array([label for _, _, label in rows])
    out = pairwise_order(rows, scores)
    out["auc_all"] = pooled_auc(labels, scores)
    out["spearman"] = float(spearmanr(scores, labels).statistic)
    return out


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=["minilm", "e5-small"],
        help="registry names, folders or hub ids",
    )
    parser.add_argument("--homedepot", type=Path, default=DATA / "homedepot")
    parser.add_argument("--qbqtc", type=Path, default=DATA / "qbqtc" / "dev.jsonl")
    parser.add_argument(
        "--limit-products",
        type=int,
        default=None,
        help="Home Depot: keep the judged products of the kept queries plus others up to this many",
    )
    parser.add_argument(
        "--limit-queries",
        type=int,
        default=None,
        help="first N Home Depot dev queries and first N QBQTC queries",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    from shopsearch.models.registry import load_bi_encoder

    torch.set_num_threads(args.threads)
    wall = time.perf_counter()
    products, queries, qrels = load_homedepot(
        args.homedepot, args.limit_products, args.limit_queries
    )
    rows = load_qbqtc(args.qbqtc, args.limit_queries)
    log(
        f"Home Depot dev: {len(products)} products, {len(queries)} queries; QBQTC: {len(rows)} "
        f"pairs"
    )

    table = []
    for name in args.models:
        log(f"model {name}")
        model = load_bi_encoder(name)
        start = time.perf_counter()
        hd = homedepot_scores(model, products, queries, qrels, args.batch_size)
        log(f"  Home Depot: {hd}")
        qb = qbqtc_scores(model, rows, args.batch_size)
        log(f"  QBQTC: {qb}")
        table.append(
            [
                name,
                hd["Recall@100"],
                hd["nDCG@10"],
                f"{qb['pair_acc']:.3f} ({qb['pairs']})",
                f"{qb['query_auc']:.3f} ({qb['queries']})",
                qb["auc_all"],
                qb["spearman"],
                f"{time.perf_counter() - start:.0f}",
            ]
        )
        del model

    print()
    print(
        format_table(
            table,
            [
                "model",
                "HD Recall@100",
                "HD nDCG@10",
                "QBQTC pair acc (pairs)",
                "QBQTC query AUC (queries)",
                "QBQTC AUC all 2 vs 0",
                "QBQTC Spearman",
                "seconds",
            ],
            float_format=".4f",
        )
    )
    print()
    print(
        f"Home Depot dev: {len(products)} products, {len(queries)} queries "
        f"({sum(1 for d in qrels.values() if any(g >= 1 for g in d.values()))} with a "
        f"relevant product are averaged); QBQTC dev: {len(rows)} pairs."
    )
    print(
        f"Machine: {describe_machine()}; torch threads {args.threads}; wall time "
        f"{time.perf_counter() - wall:.0f} s"
    )


if __name__ == "__main__":
    main()
