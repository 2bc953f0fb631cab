"""``search-cli train-ltr``: the LambdaMART stage trained on judgements or clicks, installed
into the index, with its feature importances printed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from shopsearch.cli.bench import DataArgs, _data_options
from shopsearch.cli.main import DEFAULT_INDEX, _echo_json, cli
from shopsearch.errors import SearchError


@cli.command("train-ltr")
@click.option(
    "--index",
    "index_dir",
    default=DEFAULT_INDEX,
    show_default=True,
    type=click.Path(path_type=Path),
    help="Index whose served candidates are reordered; the model is installed here.",
)
@click.option(
    "--clicks",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Click log (JSONL impressions). Otherwise judgements are used.",
)
@_data_options
@click.option(
    "--correction",
    default="position",
    show_default=True,
    type=click.Choice(["position", "ipw", "none"]),
    help="Click logs only: position-debiased LambdaMART (LightGBM's position argument), "
    "inverse-propensity-weighted click rates as labels (EM propensities), or none.",
)
@click.option(
    "--propensities",
    help="Comma-separated examination propensities by rank for --correction ipw "
    "(default: estimated from the log by EM).",
)
@click.option(
    "--top",
    type=int,
    default=None,
    help="Candidates the stage reorders (default 200, i.e. every candidate of the default "
    "hybrid); stored with the model.",
)
@click.option("--rounds", default=300, show_default=True, help="Boosting rounds (at most).")
@click.option("--learning-rate", default=0.05, show_default=True)
@click.option("--num-leaves", default=31, show_default=True)
@click.option("--min-data-in-leaf", default=20, show_default=True)
@click.option(
    "--valid-fraction",
    default=0.1,
    show_default=True,
    help="Share of queries held out for early stopping.",
)
@click.option(
    "--held-out",
    is_flag=True,
    help="Judgements only: train on the queries the installed reranker held out of its own "
    "training (so that its click logit, a feature, is as good as on unseen queries).",
)
@click.option("--threads", default=1, show_default=True, help="LightGBM threads.")
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--out",
    "out_dir",
    default="ltr-model",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for model.txt (LightGBM text format) and ltr.json.",
)
@click.option(
    "--install/--no-install",
    default=True,
    show_default=True,
    help="Copy the model into the index so `query` and `benchmark --stages ltr` use it.",
)
@click.option("--json", "as_json", is_flag=True)
def train_ltr_cmd(
    index_dir: Path,
    clicks: Path | None,
    data: DataArgs,
    correction: str,
    propensities: str | None,
    top: int | None,
    rounds: int,
    learning_rate: float,
    num_leaves: int,
    min_data_in_leaf: int,
    valid_fraction: float,
    held_out: bool,
    threads: int,
    seed: int,
    out_dir: Path,
    install: bool,
    as_json: bool,
) -> None:
    """Train a LambdaMART (LightGBM) ranker over the served pipeline's candidates.

    \b
    The candidates are the index's served ones before this stage: the reranked list when
    the index has a reranker, else the hybrid (BM25 + dense) list. Each (query, candidate)
    gets first-stage scores and ranks, the click logit, text-match, measure and brand /
    category features (see the README). Judgements: one group per judged query, label =
    grade. Clicks: see --correction.

    \b
    Examples:
      search-cli train-ltr --index hd-index --dataset ../shared/data/homedepot --split train
      search-cli train-ltr --index hd-index --dataset ../shared/data/homedepot --split train \\
          --held-out          # with a reranker: only the queries it did not train on
      search-cli train-ltr --clicks clicks.jsonl --correction ipw
    """
    import numpy as np

    from shopsearch.cli.train import _demo_or_given
    from shopsearch.engine import SearchEngine
    from shopsearch.index.store import install_ltr
    from shopsearch.ltr.model import LTRParams
    from shopsearch.ltr.train import train_ltr_from_clicks, train_ltr_from_qrels

    params = LTRParams(
        rounds=rounds,
        learning_rate=learning_rate,
        num_leaves=num_leaves,
        min_data_in_leaf=min_data_in_leaf,
        num_threads=threads,
        seed=seed,
    )
    engine = SearchEngine.open(index_dir, use_ltr=False)
    if top is not None:
        engine.ltr_top = top
    stage = engine.ltr_stage(None)
    first = engine.ltr_first_stage
    if clicks is not None:
        from shopsearch.training.clicks import read_click_log

        theta = np.array([float(x) for x in propensities.split(",")]) if propensities else None
        result = train_ltr_from_clicks(
            stage,
            first,
            read_click_log(clicks),
            correction=correction,
            propensities=theta,
            params=params,
            valid_fraction=valid_fraction,
        )
    else:
        query_map, qrel_map = _demo_or_given(data, index_dir)
        if held_out:
            from shopsearch.benchmarks.tuning import held_out_query_ids

            if engine.index.reranker_path is None:
                raise SearchError(f"{index_dir} has no installed reranker, so none held out")
            judged = {q: t for q, t in query_map.items() if q in qrel_map}
            query_map = {
                q: judged[q] for q in held_out_query_ids(engine.index.reranker_path, judged)
            }
        result = train_ltr_from_qrels(
            stage,
            first,
            query_map,
            qrel_map,
            params=params,
            valid_fraction=valid_fraction,
            trained_on=f"judgements ({data.dataset or data.qrels or 'demo'}"
            + (f", split {data.split}" if data.split else "")
            + ")",
        )
    result.model.save(out_dir)
    record = result.record()
    if install:
        install_ltr(Path(index_dir), out_dir, record)
    report: dict[str, Any] = {
        "model": str(out_dir),
        "installed": bool(install),
        "queries": result.queries,
        **record,
        "train_rows": result.model.info.get("train_rows"),
    }
    if as_json:
        _echo_json(report)
        return
    from shopsearch.cli.format import table

    click.echo(
        f"LambdaMART over the {first} stage's top {result.top}: {result.queries['train']} "
        f"training and {result.queries['valid']} held-out queries, "
        f"{report['train_rows']} training rows; best round {record['best_iteration']}"
        + (
            f", held-out nDCG@10 {record['valid_ndcg@10']:.4f}"
            if record.get("valid_ndcg@10") is not None
            else ""
        )
    )
    gains = sorted(record["importances"].items(), key=lambda kv: -kv[1])
    total = sum(g for _, g in gains) or 1.0
    rows = [[name, f"{gain:.1f}", f"{100 * gain / total:.1f}%"] for name, gain in gains]
    click.echo(table(["feature", "gain", "share"], rows, [False, True, True]))
    click.echo(f"model: {out_dir}/model.txt (LightGBM text format)")
    if install:
        click.echo(f"installed into {index_dir}: `search-cli query` now ends with the ltr stage")
