"""Learning to rank from clicks, with and without position-bias correction, where the truth is
known: the demo catalogue, its generated two-facet training queries shown to simulated
position-biased shoppers (``training.simulate``: examination (1/rank)^eta, a fifth of the
sessions shuffled), LambdaMART trained on that log with each correction, and every model scored
on the 54 hand-written demo queries (never trained on) against their graded judgements.
Also: the first stage alone, and LambdaMART on the training queries' true judgements (what a
perfect debiasing could reach).

    python -m shopsearch.benchmarks.ltr_clicks [--queries 300] [--sessions 20] [--eta 1.0]

BM25-only index (no encoder), one LightGBM thread: about a minute on two cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

MEASURES = ("nDCG@10", "MRR@10", "Recall@100")


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    from shopsearch.benchmarks.metrics import evaluate
    from shopsearch.demo.catalog import generate_catalog
    from shopsearch.demo.queries import demo_qrels, demo_queries, training_queries
    from shopsearch.engine import SearchEngine
    from shopsearch.index.store import build_index
    from shopsearch.ltr.model import LTRParams
    from shopsearch.ltr.train import train_ltr_from_clicks, train_ltr_from_qrels
    from shopsearch.training.pipeline import simulate_click_log
    from shopsearch.training.propensity import estimate_propensities_em

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--eta", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    products = generate_catalog()
    test_queries = dict(demo_queries())
    test_qrels = demo_qrels(products)
    train_queries, train_qrels = training_queries(products, n_queries=args.queries)
    params = LTRParams(min_data_in_leaf=10, num_threads=1, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        index_dir = Path(tmp) / "index"
        build_index(products, index_dir, encoder=None, source="demo")
        engine = SearchEngine.open(index_dir, use_reranker=False, load_encoder=False)
        first = engine.ltr_first_stage
        stage = engine.ltr_stage(None)
        ids = sorted(train_queries)
        shown = engine.stage(first).search([train_queries[q] for q in ids], 10)
        log = simulate_click_log(
            {q: [h.product_id for h in hits] for q, hits in zip(ids, shown)},
            train_qrels,
            train_queries,
            sessions_per_query=args.sessions,
            eta=args.eta,
            seed=args.seed,
        )
        propensities = estimate_propensities_em(log, max_position=10)

        def score(retriever) -> dict[str, float]:
            qids = sorted(q for q in test_queries if q in test_qrels)
            results = retriever.search([test_queries[q] for q in qids], 1000)
            run = {q: {h.product_id: h.score for h in hits} for q, hits in zip(qids, results)}
            return evaluate(test_qrels, run, MEASURES)[1]

        rows: dict[str, dict[str, float]] = {first: score(engine.stage(first))}
        for correction in ("none", "position", "ipw"):
            result = train_ltr_from_clicks(
                stage, first, log, correction=correction, propensities=propensities, params=params
            )
            rows[f"ltr, clicks, {correction}"] = score(engine.ltr_stage(result.model))
        truth = train_ltr_from_qrels(stage, first, train_queries, train_qrels, params=params)
        rows["ltr, true judgements"] = score(engine.ltr_stage(truth.model))
    clicks = sum(i.clicked for i in log)
    print(
        f"{len(log)} impressions, {clicks} clicks, {len(train_queries)} training queries; "
        f"EM propensities {[round(float(x), 3) for x in propensities]}; "
        f"true (1/rank)^{args.eta}"
    )
    print(f"| ranker | {' | '.join(MEASURES)} |")
    print(f"|---|{'---:|' * len(MEASURES)}")
    for name, metrics in rows.items():
        print(f"| {name} | {' | '.join(f'{metrics[m]:.4f}' for m in MEASURES)} |")
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()
