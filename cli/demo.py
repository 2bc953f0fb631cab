"""``search-cli demo``: every stage on the built-in synthetic catalogue, in one command."""

from __future__ import annotations

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
    rows = [
        [
            str(r),
            h.product_id,
            clip(result.products[h.product_id].title, 46),
            f"{h.scores.get('bm25', 0):.2f}",
            f"{h.scores.get('dense', 0):.3f}",
            f"{h.scores['click_probability']:.3f}" if "click_probability" in h.scores else "-",
        ]
        for r, h in enumerate(result.hits, start=1)
    ]
    click.echo(f"\nquery: {query}  ({result.timings_ms['total']:.0f} ms)")
    click.echo(
        table(
            ["#", "id", "title", "bm25", "dense", "p(click)"],
            rows,
            [True, False, False, True, True, True],
        )
    )


@cli.command("demo")
@click.option(
    "--workdir",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the index, click log, models and report go.",
)
@click.option("--model", default="e5-small", show_default=True, help="Bi-encoder.")
@click.option(
    "--reranker-base",
    default="e5-small",
    show_default=True,
    help="Model the reranker is fine-tuned from.",
)
@click.option("--epochs", default=1, show_default=True, help="Reranker training epochs.")
@click.option(
    "--train-queries",
    "train_queries_n",
    default=200,
    show_default=True,
    help="Generated training queries the shoppers' clicks are simulated on.",
)
def demo_cmd(
    workdir: Path, model: str, reranker_base: str, epochs: int, train_queries_n: int
) -> None:
    """Build, learn and measure on the synthetic demo catalogue (a few minutes on 2 cores).

    \b
    1. index the 2,400-product bilingual demo catalogue (BM25 + e5-small + FAISS)
    2. simulate position-biased shoppers clicking on generated training queries
    3. fine-tune a cross-encoder on those clicks (EM propensities, IPW), calibrate it,
       tune its blend with the fused score on held-out training queries, install it
    4. search 夏季连衣裙 and king poster bed through every stage
    5. benchmark bm25 / dense / hybrid / rerank on the 54 hand-written demo queries,
       none of which the reranker was trained or tuned on

    Afterwards `search-cli query "..." --index WORKDIR/search-index` uses the trained
    reranker. The catalogue, queries, judgements and clicks are synthetic.
    """
    from shopsearch.benchmarks.runner import run_benchmark
    from shopsearch.demo.catalog import DEMO_NOTICE, generate_catalog
    from shopsearch.demo.queries import demo_qrels, demo_queries
    from shopsearch.demo.workflow import simulate_training_clicks, train_install_and_tune
    from shopsearch.engine import SearchEngine
    from shopsearch.index.store import build_index
    from shopsearch.retrieval.encoders import SentenceTransformerEncoder
    from shopsearch.training.clicks import write_click_log

    started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    index_dir, clicks_path = workdir / "search-index", workdir / "demo-clicks.jsonl"
    reranker_dir, report_dir = workdir / "demo-reranker", workdir / "demo-report"
    click.echo(DEMO_NOTICE)

    t0 = _step(f"1/5 index the demo catalogue with BM25 + {model}")
    products = generate_catalog()
    summary = build_index(
        products,
        index_dir,
        encoder=SentenceTransformerEncoder(model),
        show_progress=True,
        source="built-in synthetic demo catalogue",
    )
    click.echo(
        f"{summary.products} products, {summary.texts_per_second:.0f} products/s "
        f"encoded, {time.perf_counter() - t0:.0f} s"
    )

    t0 = _step("2/5 simulate shoppers clicking on the served ranking (position-biased)")
    # The reranker learns from generated two-facet queries ("白色尼龙双肩包", "walnut rattan
    # nightstand"), never from the 54 hand-written demo queries it is measured on.
    queries, qrels = dict(demo_queries()), demo_qrels(products)
    clicks = simulate_training_clicks(
        SearchEngine.open(index_dir, use_reranker=False), products, n_queries=train_queries_n
    )
    write_click_log(clicks.log, clicks_path)
    click.echo(
        f"{len(clicks.queries)} generated training queries, {len(clicks.log)} "
        f"impressions, {sum(i.clicked for i in clicks.log)} clicks -> {clicks_path} "
        f"({time.perf_counter() - t0:.0f} s)"
    )

    t0 = _step(f"3/5 fine-tune a click-probability reranker from {reranker_base} on the clicks")
    trained = train_install_and_tune(
        index_dir, clicks, products, reranker_base, reranker_dir, epochs=epochs
    )
    result, blend = trained.training, trained.blend
    click.echo(
        "examination propensity by rank, estimated from the log by EM: "
        + " ".join(f"{p:.2f}" for p in result.propensities or [])
    )
    click.echo(
        "dev log loss / AUC by epoch: "
        + ", ".join(
            f"{row.get('dev_log_loss', float('nan')):.3f} / {row.get('dev_auc', float('nan')):.3f}"
            for row in result.history
        )
    )
    cal = result.calibration
    click.echo(
        f"calibration on held-out queries: ECE {cal.test_ece_before:.3f} -> "
        f"{cal.test_ece_after:.3f}, log loss {cal.test_log_loss_before:.3f} -> "
        f"{cal.test_log_loss_after:.3f}"
    )
    click.echo(
        f"blend tuned on {trained.held_out_queries} held-out training queries: nDCG@10 "
        f"fused {blend.fused_score:.3f} -> {blend.best_score:.3f} with weight "
        f"{blend.best.weight:g} on the click logit, top {blend.best.top}; installed "
        f"into {index_dir} ({time.perf_counter() - t0:.0f} s)"
    )

    _step("4/5 search")
    engine = SearchEngine.open(index_dir)
    for query in ("夏季连衣裙", "king poster bed"):
        _show(engine, query)

    t0 = _step("5/5 benchmark every stage on the demo judgements")
    stages = dict(engine.stages)
    report = run_benchmark(
        stages,
        queries,
        qrels,
        depth=100,
        out_dir=report_dir,
        latency_queries=20,
        progress=False,
        extra={
            "note": "synthetic demo; the reranker was trained on clicks "
            "over generated queries, not these"
        },
    )
    from shopsearch.benchmarks.report import format_table

    rows = [
        [
            s.name,
            s.metrics["nDCG@10"],
            s.metrics["Recall@100"],
            s.metrics["MRR@10"],
            s.latency.get("p50_ms") or float("nan"),
        ]
        for s in report.stages
    ]
    click.echo(format_table(rows, ["stage", "nDCG@10", "Recall@100", "MRR@10", "p50 ms"]))
    click.echo(f"report: {report_dir}/report.md ({time.perf_counter() - t0:.0f} s)")
    click.echo(
        f"\ndone in {time.perf_counter() - started:.0f} s. Try: search-cli query "
        f'"真丝连衣裙" --index {index_dir} --explain'
    )
