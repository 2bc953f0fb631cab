"""``search-cli demo``: every stage on the built-in synthetic catalogue, in one command."""

from __future__ import annotations

import random
import time
from pathlib import Path

import click

from shopsearch.cli.main import cli


def _step(title: str) -> float:
    click.echo(click.style(f"\n== {title}", bold=True))
    return time.perf_counter()


def _show(engine, query: str, k: int = 5) -> None:
    from shopsearch.cli.format import clip, table

    result = engine.search(query, k=k)
    rows = [[str(r), h.product_id, clip(result.products[h.product_id].title, 46),
             f"{h.scores.get('bm25', 0):.2f}", f"{h.scores.get('dense', 0):.3f}",
             f"{h.scores['click_probability']:.3f}" if "click_probability" in h.scores else "-"]
            for r, h in enumerate(result.hits, start=1)]
    click.echo(f"\nquery: {query}  ({result.timings_ms['total']:.0f} ms)")
    click.echo(table(["#", "id", "title", "bm25", "dense", "p(click)"], rows,
                     [True, False, False, True, True, True]))


@cli.command("demo")
@click.option("--workdir", default=".", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Where the index, click log, models and report go.")
@click.option("--model", default="e5-small", show_default=True, help="Bi-encoder.")
@click.option("--reranker-base", default="e5-small", show_default=True,
              help="Model the reranker is fine-tuned from.")
@click.option("--epochs", default=3, show_default=True, help="Reranker training epochs.")
def demo_cmd(workdir: Path, model: str, reranker_base: str, epochs: int) -> None:
    """Build, learn and measure on the synthetic demo catalogue (a few minutes on 2 cores).

    \b
    1. index the 2,400-product bilingual demo catalogue (BM25 + e5-small + FAISS)
    2. simulate a position-biased click log over the 54 demo queries
    3. fine-tune a cross-encoder on the demo judgements, calibrate it, install it
    4. search 夏季连衣裙 and king poster bed through every stage
    5. benchmark bm25 / dense / hybrid / rerank on the demo judgements

    Afterwards `search-cli query "..." --index WORKDIR/search-index` uses the trained
    reranker. The catalogue, queries, judgements and clicks are synthetic.
    """
    from shopsearch.benchmarks.runner import run_benchmark
    from shopsearch.demo.catalog import DEMO_NOTICE, generate_catalog
    from shopsearch.demo.queries import demo_qrels, demo_queries
    from shopsearch.engine import SearchEngine
    from shopsearch.index.store import build_index, install_reranker
    from shopsearch.models.registry import resolve_model
    from shopsearch.retrieval.encoders import SentenceTransformerEncoder
    from shopsearch.training.clicks import write_click_log
    from shopsearch.training.pipeline import simulate_click_log, train_reranker_from_qrels
    from shopsearch.training.propensity import estimate_propensities_em
    from shopsearch.training.reranker import RerankerTrainingConfig

    started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    index_dir, clicks_path = workdir / "search-index", workdir / "demo-clicks.jsonl"
    reranker_dir, report_dir = workdir / "demo-reranker", workdir / "demo-report"
    click.echo(DEMO_NOTICE)

    t0 = _step(f"1/5 index the demo catalogue with BM25 + {model}")
    products = generate_catalog()
    summary = build_index(products, index_dir, encoder=SentenceTransformerEncoder(model),
                          show_progress=True, source="built-in synthetic demo catalogue")
    click.echo(f"{summary.products} products, {summary.texts_per_second:.0f} products/s "
               f"encoded, {time.perf_counter() - t0:.0f} s")

    t0 = _step("2/5 simulate shoppers clicking on the hybrid ranking (position-biased)")
    queries, qrels = dict(demo_queries()), demo_qrels(products)
    engine = SearchEngine.open(index_dir, use_reranker=False)
    qids = [q for q in queries if q in qrels]
    shown = engine.stage("hybrid").search([queries[q] for q in qids], 10)
    log = simulate_click_log({q: [h.product_id for h in hits] for q, hits in zip(qids, shown)},
                             qrels, queries, sessions_per_query=40)
    write_click_log(log, clicks_path)
    click.echo(f"{len(log)} impressions, {sum(i.clicked for i in log)} clicks -> {clicks_path} "
               f"({time.perf_counter() - t0:.0f} s)")

    theta = estimate_propensities_em(log)
    click.echo("examination propensity by rank, estimated from the log by EM: "
               + " ".join(f"{p:.2f}" for p in theta))

    t0 = _step(f"3/5 fine-tune a click-probability reranker from {reranker_base}")
    # The demo's shown lists are nearly all relevant (the catalogue has ~100 summer dresses),
    # so its clicks say little about what to push *down*; the demo therefore trains on its
    # graded judgements with BM25-mined negatives, a sample per query to stay within minutes.
    # `search-cli train-reranker --clicks` is the same recipe on a real click log.
    rng = random.Random(0)
    sampled = {q: dict(rng.sample(sorted(judged.items()), min(12, len(judged))))
               for q, judged in qrels.items()}
    base = str(resolve_model(reranker_base).path or reranker_base)

    def mine(texts: list[str]) -> list[list[str]]:
        return [[h.product_id for h in hits] for hits in engine.bm25_search(texts, 30)]

    result = train_reranker_from_qrels(
        queries, sampled, {p.id: p.text() for p in products}, base, reranker_dir,
        mine_negatives=mine, negatives_per_query=8,
        config=RerankerTrainingConfig(epochs=epochs, batch_size=16, learning_rate=1e-4,
                                      max_length=48, freeze_embeddings=True))
    cal = result.calibration
    # Install only a reranker that beats the hybrid ranking on queries it never saw: a weak
    # one would make every search worse, whatever its calibration.
    from shopsearch.benchmarks.metrics import evaluate, hits_to_run
    from shopsearch.rerank.cross_encoder import CrossEncoderReranker
    from shopsearch.training.pipeline import split_queries

    held_out = sorted(split_queries(sorted(sampled), seed=0)[2])
    texts = [queries[q] for q in held_out]
    hybrid = dict(zip(held_out, engine.hybrid_search(texts, 50)))
    engine.reranker = CrossEncoderReranker(reranker_dir)
    reranked = {q: engine.rerank_hits(queries[q], hits) for q, hits in hybrid.items()}
    engine.reranker = None
    judged = {q: qrels[q] for q in held_out}
    before = evaluate(judged, hits_to_run(hybrid), ["nDCG@10"])[1]["nDCG@10"]
    after = evaluate(judged, hits_to_run(reranked), ["nDCG@10"])[1]["nDCG@10"]
    click.echo(f"held-out queries ({len(held_out)}): nDCG@10 hybrid {before:.3f}, "
               f"reranked {after:.3f}")
    if after >= before:
        install_reranker(index_dir, reranker_dir)
        click.echo(f"installed the reranker into {index_dir}")
    else:
        click.echo("not installed: it does not beat the hybrid ranking on held-out queries "
                   "(more training data or epochs would be needed)")
    click.echo("dev log loss / AUC by epoch: " + ", ".join(
        f"{row.get('dev_log_loss', float('nan')):.3f} / {row.get('dev_auc', float('nan')):.3f}"
        for row in result.history))
    click.echo(f"calibration on held-out queries: ECE {cal.test_ece_before:.3f} -> "
               f"{cal.test_ece_after:.3f}, log loss {cal.test_log_loss_before:.3f} -> "
               f"{cal.test_log_loss_after:.3f} ({time.perf_counter() - t0:.0f} s)")

    _step("4/5 search")
    engine = SearchEngine.open(index_dir)
    if engine.reranker is None:
        click.echo("(results are not reranked)")
    for query in ("夏季连衣裙", "king poster bed"):
        _show(engine, query)

    t0 = _step("5/5 benchmark every stage on the demo judgements")
    stages = {name: engine.stage(name) for name in ("bm25", "dense", "hybrid", "rerank")
              if name != "rerank" or engine.reranker is not None}
    report = run_benchmark(stages, queries, qrels, depth=100, out_dir=report_dir,
                           latency_queries=20, progress=False,
                           extra={"note": "synthetic demo; the reranker was trained on clicks "
                                          "over most of these queries"})
    from shopsearch.benchmarks.report import format_table

    rows = [[s.name, s.metrics["nDCG@10"], s.metrics["Recall@100"], s.metrics["MRR@10"],
             s.latency.get("p50_ms") or float("nan")] for s in report.stages]
    click.echo(format_table(rows, ["stage", "nDCG@10", "Recall@100", "MRR@10", "p50 ms"]))
    click.echo(f"report: {report_dir}/report.md ({time.perf_counter() - t0:.0f} s)")
    click.echo(f"\ndone in {time.perf_counter() - started:.0f} s. Try: search-cli query "
               f"\"真丝连衣裙\" --index {index_dir} --explain")
