"""Learning from logs: ``simulate-clicks``, ``train-reranker``, ``train-retriever``,
``pretrain``. Each command reads data, calls one recipe in ``shopsearch.training`` and prints
what it measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from shopsearch.cli.bench import DataArgs, _data_options, _labelled_queries
from shopsearch.cli.main import DEFAULT_INDEX, _echo_json, cli
from shopsearch.errors import SearchError


def _demo_or_given(
    data: DataArgs, index_dir: Path
) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """The demo queries and judgements when none are given, else the given ones (a data
    set's catalogue checked against the index's)."""
    if not data.given:
        from shopsearch.demo.catalog import generate_catalog
        from shopsearch.demo.queries import demo_qrels, demo_queries

        query_map = dict(demo_queries())
        return query_map, demo_qrels(generate_catalog())
    return _labelled_queries(data, index_dir)


@cli.command("simulate-clicks")
@click.option(
    "--index",
    "index_dir",
    default=DEFAULT_INDEX,
    show_default=True,
    type=click.Path(path_type=Path),
    help="Index whose ranking users are shown.",
)
@_data_options
@click.option(
    "--stage",
    default="hybrid",
    show_default=True,
    type=click.Choice(["bm25", "dense", "hybrid"]),
    help="Ranking shown to users.",
)
@click.option("--sessions-per-query", default=20, show_default=True)
@click.option("--depth", default=10, show_default=True, help="Results shown per session.")
@click.option(
    "--eta", default=1.0, show_default=True, help="Position bias: P(examine rank p) = (1/p)^eta."
)
@click.option(
    "--shuffled-fraction",
    default=0.2,
    show_default=True,
    help="Share of sessions that show the top results in random order.",
)
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--out",
    "out_path",
    default="clicks.jsonl",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
)
def simulate_clicks_cmd(
    index_dir: Path,
    data: DataArgs,
    stage: str,
    sessions_per_query: int,
    depth: int,
    eta: float,
    shuffled_fraction: float,
    seed: int,
    out_path: Path,
) -> None:
    """Simulate a click log from judgements and the engine's own ranking.

    \b
    A position-based model: a shopper examines rank p with probability (1/p)^eta and clicks
    an examined product with probability 0.05 / 0.3 / 0.7 for grade 0 / 1 / 2 (noise clicks
    included); a click becomes a purchase with probability 0 / 0.05 / 0.2. Seeded, so the
    same inputs give the same log. Without --queries/--qrels it uses the demo queries.
    """
    from shopsearch.engine import SearchEngine
    from shopsearch.training.clicks import write_click_log
    from shopsearch.training.pipeline import simulate_click_log

    query_map, qrel_map = _demo_or_given(data, index_dir)
    engine = SearchEngine.open(index_dir, use_reranker=False, load_encoder=stage != "bm25")
    qids = [q for q in query_map if q in qrel_map]
    ranked = engine.stage(stage).search([query_map[q] for q in qids], depth)
    rankings = {q: [h.product_id for h in hits] for q, hits in zip(qids, ranked)}
    log = simulate_click_log(
        rankings,
        qrel_map,
        query_map,
        sessions_per_query=sessions_per_query,
        depth=depth,
        eta=eta,
        shuffled_fraction=shuffled_fraction,
        seed=seed,
    )
    write_click_log(log, out_path)
    clicks = sum(i.clicked for i in log)
    click.echo(
        f"wrote {len(log)} impressions ({clicks} clicks, "
        f"{sum(i.purchased for i in log)} purchases) for {len(qids)} queries to {out_path}"
    )


def _training_config(
    epochs, batch_size, learning_rate, warmup_ratio, weight_decay, dropout, max_length, seed
):
    from shopsearch.training.reranker import RerankerTrainingConfig

    return RerankerTrainingConfig(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_ratio=warmup_ratio,
        weight_decay=weight_decay,
        dropout=dropout,
        max_length=max_length,
        seed=seed,
    )


def _print_reranker_report(result: Any) -> None:
    cal = result.calibration
    click.echo(
        f"model: {result.model_dir} (best epoch {result.best_epoch}; queries "
        f"train/dev/test {result.split['train']}/{result.split['dev']}/"
        f"{result.split['test']}; {result.train_pairs} training pairs)"
    )
    for row in result.history:
        loss = "-" if row.get("train_loss") is None else f"{row['train_loss']:.4f}"
        click.echo(
            f"  epoch {row['epoch']}: train loss {loss}, dev log loss "
            f"{row.get('dev_log_loss', float('nan')):.4f}, dev AUC "
            f"{row.get('dev_auc', float('nan')):.4f}"
        )
    if result.propensities:
        click.echo("  propensities by rank: " + " ".join(f"{p:.2f}" for p in result.propensities))
    click.echo(
        f"calibration ({cal.method}) on {cal.test_pairs} held-out pairs: log loss "
        f"{cal.test_log_loss_before:.4f} -> {cal.test_log_loss_after:.4f}, ECE "
        f"{cal.test_ece_before:.4f} -> {cal.test_ece_after:.4f}"
    )
    click.echo("reliability after calibration (bin: count, mean predicted, observed):")
    for row in cal.reliability_after:
        if row["count"]:
            click.echo(
                f"  [{row['bin_lo']:.1f}, {row['bin_hi']:.1f}): {row['count']:5d}  "
                f"{row['mean_predicted']:.3f}  {row['observed_rate']:.3f}"
            )


_TRAIN_OPTIONS = [
    click.option("--epochs", default=2, show_default=True),
    click.option("--batch-size", default=32, show_default=True),
    click.option("--lr", "learning_rate", default=3e-5, show_default=True),
    click.option("--warmup-ratio", default=0.1, show_default=True),
    click.option("--weight-decay", default=0.01, show_default=True, help="AdamW (L2) decay."),
    click.option("--dropout", type=float, default=None, help="Override the model's dropout."),
    click.option(
        "--max-length",
        default=96,
        show_default=True,
        help="Tokens per (query, product) pair; short keeps CPU training fast.",
    ),
    click.option("--seed", default=0, show_default=True),
]


def _train_options(func):
    for option in reversed(_TRAIN_OPTIONS):
        func = option(func)
    return func


@cli.command("train-reranker")
@click.option(
    "--index",
    "index_dir",
    default=DEFAULT_INDEX,
    show_default=True,
    type=click.Path(path_type=Path),
    help="Index giving product texts and BM25 negatives; the model is installed here.",
)
@click.option(
    "--clicks",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Click log (JSONL impressions). Otherwise judgements are used.",
)
@_data_options
@click.option(
    "--base-model",
    default="e5-small",
    show_default=True,
    help="Model to start from: e5-small, minilm, a folder or a hub id.",
)
@click.option(
    "--out",
    "out_dir",
    default="reranker-model",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
)
@click.option(
    "--position-weighting/--no-position-weighting",
    default=True,
    show_default=True,
    help="Inverse-propensity weighting of clicks by position (click logs only).",
)
@click.option(
    "--propensities",
    help="Comma-separated examination propensities by rank "
    "(default: estimated from the log by EM).",
)
@click.option(
    "--negatives-per-query",
    default=5,
    show_default=True,
    help="Sampled (clicks) or mined (judgements) label-0 products per query.",
)
@click.option(
    "--negatives-from",
    default="hybrid",
    show_default=True,
    type=click.Choice(["hybrid", "bm25"]),
    help="Judgements only: the index ranking unjudged negatives are mined from (2/3 "
    "from its top 30, 1/3 from ranks 31-100). Hybrid is what gets reranked.",
)
@click.option(
    "--calibration", default="platt", show_default=True, type=click.Choice(["platt", "temperature"])
)
@_train_options
@click.option(
    "--install/--no-install",
    default=True,
    show_default=True,
    help="Copy the trained model into the index so `query` reranks with it.",
)
@click.option("--json", "as_json", is_flag=True)
def train_reranker_cmd(
    index_dir: Path,
    clicks: Path | None,
    data: DataArgs,
    base_model: str,
    out_dir: Path,
    position_weighting: bool,
    propensities: str | None,
    negatives_per_query: int,
    negatives_from: str,
    calibration: str,
    epochs,
    batch_size,
    learning_rate,
    warmup_ratio,
    weight_decay,
    dropout,
    max_length,
    seed,
    install: bool,
    as_json: bool,
) -> None:
    """Fine-tune the cross-encoder that scores click probability, then calibrate it.

    \b
    From a click log: shown-but-not-clicked impressions are negatives, clicks are positives,
    each weighted by 1/propensity of its rank (estimated by EM unless given), plus random
    negatives. Queries are split 80/10/10 (60/20/20 under 200 queries) into train, dev
    (early stopping, calibration fit) and test (reported calibration).
    From judgements: label = grade/2, with negatives mined from the index's own ranking.

    \b
    Examples:
      search-cli simulate-clicks --out clicks.jsonl
      search-cli train-reranker --clicks clicks.jsonl
      search-cli train-reranker --index hd-index --dataset homedepot --split train \\
          --base-model minilm
    """
    import numpy as np

    from shopsearch.engine import SearchEngine
    from shopsearch.index.store import install_reranker
    from shopsearch.models.registry import resolve_model
    from shopsearch.training import pipeline

    engine = SearchEngine.open(
        index_dir, use_reranker=False, load_encoder=clicks is None and negatives_from == "hybrid"
    )
    product_text = {p.id: p.text() for p in engine.index.products}
    config = _training_config(
        epochs, batch_size, learning_rate, warmup_ratio, weight_decay, dropout, max_length, seed
    )
    base = resolve_model(base_model).path or base_model
    if clicks is not None:
        from shopsearch.training.clicks import read_click_log

        theta = np.array([float(x) for x in propensities.split(",")]) if propensities else None
        result = pipeline.train_reranker_from_clicks(
            read_click_log(clicks),
            product_text,
            str(base),
            out_dir,
            config=config,
            position_weighting=position_weighting,
            propensities=theta,
            negatives_per_query=negatives_per_query,
            calibration=calibration,
            seed=seed,
        )
    else:
        query_map, qrel_map = _demo_or_given(data, index_dir)

        # A BM25-only index has no hybrid ranking: BM25 is what its reranker reranks.
        mine_stage = "hybrid" if negatives_from == "hybrid" and engine.encoder else "bm25"

        def mine(texts: list[str]) -> list[list[str]]:
            ranked = engine.stage(mine_stage).search(texts, 100)
            return [[h.product_id for h in hits] for hits in ranked]

        result = pipeline.train_reranker_from_qrels(
            query_map,
            qrel_map,
            product_text,
            str(base),
            out_dir,
            mine_negatives=mine,
            negatives_per_query=negatives_per_query,
            config=config,
            calibration=calibration,
            seed=seed,
        )
    if install:
        install_reranker(Path(index_dir), out_dir)
    if as_json:
        _echo_json(result.to_dict())
        return
    _print_reranker_report(result)
    if install:
        click.echo(f"installed into {index_dir}: `search-cli query` now reranks with it")


@cli.command("train-retriever")
@click.option(
    "--index",
    "index_dir",
    default=DEFAULT_INDEX,
    show_default=True,
    type=click.Path(path_type=Path),
    help="Index to mine negatives from and rebuild.",
)
@click.option(
    "--clicks",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Click log: clicked products are positives. Otherwise judgements (grade>=1).",
)
@_data_options
@click.option(
    "--base-model", default=None, help="Start from this model (default: the index's own encoder)."
)
@click.option(
    "--out",
    "out_dir",
    default="retriever-model",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
)
@click.option("--epochs", default=1, show_default=True)
@click.option(
    "--batch-size",
    default=64,
    show_default=True,
    help="In-batch negatives per query = batch size - 1.",
)
@click.option("--lr", "learning_rate", default=2e-5, show_default=True)
@click.option(
    "--hard-negatives",
    default=1,
    show_default=True,
    help="BM25-mined negatives per query (ranks 4-50, judged/clicked ones skipped).",
)
@click.option("--max-length", default=64, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--rebuild/--no-rebuild",
    default=True,
    show_default=True,
    help="Re-encode the catalogue with the new model and rebuild the index.",
)
@click.option("--json", "as_json", is_flag=True)
def train_retriever_cmd(
    index_dir: Path,
    clicks: Path | None,
    data: DataArgs,
    base_model: str | None,
    out_dir: Path,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    hard_negatives: int,
    max_length: int,
    seed: int,
    rebuild: bool,
    as_json: bool,
) -> None:
    """Fine-tune the two towers (DPR-style, shared weights) with in-batch and BM25-mined hard
    negatives, then rebuild the index's dense part with the new model."""
    from shopsearch.engine import SearchEngine
    from shopsearch.training.pipeline import train_retriever

    engine = SearchEngine.open(index_dir, use_reranker=False, load_encoder=False)
    if clicks is not None:
        from shopsearch.training.clicks import clicked_as_judgements, read_click_log

        query_map, qrel_map = clicked_as_judgements(read_click_log(clicks))
    else:
        query_map, qrel_map = _demo_or_given(data, index_dir)
    base = base_model or (engine.index.manifest.encoder or {}).get("name")
    if not base:
        raise SearchError("the index has no dense part; give --base-model")
    result = train_retriever(
        engine,
        query_map,
        qrel_map,
        base,
        out_dir,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        hard_negatives=hard_negatives,
        max_length=max_length,
        seed=seed,
        rebuild_index=Path(index_dir) if rebuild else None,
    )
    if as_json:
        _echo_json(result)
        return
    for row in result["history"]:
        click.echo(
            "  epoch {epoch}: ".format(**row)
            + ", ".join(
                f"{k} {v:.4f}" for k, v in row.items() if k != "epoch" and isinstance(v, float)
            )
        )
    click.echo(f"model: {out_dir} (best epoch {result['best_epoch']})")
    if rebuild:
        click.echo(f"rebuilt {index_dir} with it: {result['rebuild']}")


@cli.command("pretrain")
@click.option(
    "--index",
    "index_dir",
    default=DEFAULT_INDEX,
    show_default=True,
    type=click.Path(path_type=Path),
    help="Index whose catalogue text to learn from.",
)
@click.option(
    "--catalog",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Or a catalogue file.",
)
@click.option("--base-model", default="minilm", show_default=True)
@click.option(
    "--out",
    "out_dir",
    default="pretrained-model",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
)
@click.option("--epochs", default=1, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--lr", "learning_rate", default=5e-5, show_default=True)
@click.option("--max-length", default=64, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def pretrain_cmd(
    index_dir: Path,
    catalog: Path | None,
    base_model: str,
    out_dir: Path,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    max_length: int,
    seed: int,
    as_json: bool,
) -> None:
    """Domain-adaptive masked-language-model pre-training on catalogue text.

    The output folder can be the --base-model of train-retriever and train-reranker.
    Reports held-out masked-LM perplexity before and after.
    """
    from shopsearch.models.registry import resolve_model
    from shopsearch.training.pretrain import pretrain_mlm

    if catalog is not None:
        from shopsearch.index.catalog import read_catalog

        texts = [p.text() for p in read_catalog(catalog)]
    else:
        from shopsearch.index.store import load_index

        texts = [p.text() for p in load_index(index_dir).products]
    base = resolve_model(base_model).path or base_model
    report = pretrain_mlm(
        str(base),
        texts,
        out_dir,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        max_length=max_length,
        seed=seed,
        overwrite=True,
    )
    if as_json:
        _echo_json(report)
        return
    click.echo(
        f"masked-LM perplexity on held-out catalogue text: "
        f"{report['perplexity_before']:.2f} -> {report['perplexity_after']:.2f}; "
        f"model: {out_dir}"
    )
