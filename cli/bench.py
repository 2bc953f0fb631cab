"""``search-cli benchmark`` and ``search-cli tune-fusion``: measured quality and speed against
judged queries (TREC qrels), with run files anyone can re-score with trec_eval."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import click

from shopsearch.cli.main import DEFAULT_INDEX, _echo_json, cli
from shopsearch.errors import SearchError


@dataclass(frozen=True)
class DataArgs:
    """Where judged queries come from: --queries/--qrels, or --dataset/--split."""

    queries: Path | None = None
    qrels: Path | None = None
    dataset: str | None = None
    split: str | None = None
    limit: int | None = None
    skip: int = 0

    @property
    def given(self) -> bool:
        return bool(self.queries or self.qrels or self.dataset)


def _labelled_queries(
    data: DataArgs, index_dir: Path | None = None
) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """Judged queries from the data options. With ``index_dir``, a data set that brings its
    own catalogue must be the catalogue that index was built from (its hash is checked)."""
    from shopsearch.benchmarks.datasets import load_dataset
    from shopsearch.benchmarks.trec import read_qrels, read_queries

    if data.dataset:
        labelled = load_dataset(data.dataset, data.split)
        if index_dir is not None and labelled.products:
            from shopsearch.index.store import check_catalog

            check_catalog(index_dir, labelled.products, f"data set {data.dataset}")
        query_map, qrel_map = labelled.queries, labelled.qrels
    elif data.queries and data.qrels:
        query_map, qrel_map = read_queries(data.queries), read_qrels(data.qrels)
    else:
        raise SearchError("give --queries and --qrels, or --dataset")
    if data.limit or data.skip:
        judged = [q for q in query_map if q in qrel_map][data.skip :]
        if data.limit:
            judged = judged[: data.limit]
        query_map = {q: query_map[q] for q in judged}
    return query_map, qrel_map


_DATA_OPTIONS = [
    click.option(
        "--queries",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Queries: TSV `query_id<TAB>query` or JSONL.",
    ),
    click.option(
        "--qrels",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Judgements: TREC `query_id 0 product_id grade`.",
    ),
    click.option(
        "--dataset",
        help="Instead of --queries/--qrels: a data set folder (BEIR, "
        "ESCI, WANDS, Multi-CPR, Home Depot layouts) or 'homedepot'.",
    ),
    click.option("--split", default=None, help="Split of --dataset (e.g. dev, test)."),
    click.option("--limit", type=int, help="Only the first N judged queries (quick runs)."),
    click.option(
        "--skip",
        type=int,
        default=0,
        help="Leave out the first N judged queries (e.g. the ones trained on).",
    ),
]


def _data_options(func):
    """Add the data options to a command, handed to it as one ``data: DataArgs``."""

    @functools.wraps(func)
    def wrapper(*args, queries, qrels, dataset, split, limit, skip, **kwargs):
        return func(*args, data=DataArgs(queries, qrels, dataset, split, limit, skip), **kwargs)

    for option in reversed(_DATA_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


@cli.command("benchmark")
@click.option(
    "--index",
    "index_dir",
    default=DEFAULT_INDEX,
    show_default=True,
    type=click.Path(path_type=Path),
    help="Index of the judged catalogue.",
)
@_data_options
@click.option(
    "--stages",
    default="bm25,dense,hybrid,rerank",
    show_default=True,
    help="Comma-separated stages; ones the index cannot run are skipped with a note.",
)
@click.option(
    "--depth",
    default=1000,
    show_default=True,
    help="Results per query in runs. The hybrid and rerank stages return at most "
    "2 x the index's candidate depth, as `query` does.",
)
@click.option(
    "--out",
    "out_dir",
    default="benchmark-report",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for run files, report.md/json and report.png.",
)
@click.option(
    "--reranker", help="Cross-encoder folder for the rerank stage (default: the index's own)."
)
@click.option(
    "--latency-queries",
    default=200,
    show_default=True,
    help="Single-query calls timed per stage (0 skips latency).",
)
@click.option(
    "--spelling",
    is_flag=True,
    help="Correct unknown query words against the index's vocabulary (as `query --spelling`).",
)
@click.option("--json", "as_json", is_flag=True, help="Print report.json instead of tables.")
def benchmark_cmd(
    index_dir: Path,
    data: DataArgs,
    stages: str,
    depth: int,
    out_dir: Path,
    reranker: str | None,
    latency_queries: int,
    spelling: bool,
    as_json: bool,
) -> None:
    """Run each stage over judged queries; write TREC runs and a report.

    \b
    Metrics follow trec_eval exactly (graded nDCG, Recall over judged-relevant products,
    queries without a relevant judgement left out); every non-baseline stage gets a paired
    randomisation test against the first stage. `trec_eval -c OUT/qrels.txt OUT/bm25.run`
    reproduces the numbers.

    \b
    Example (Home Depot dev over its full catalogue):
      search-cli build-index --catalog ../shared/data/homedepot/products.jsonl \\
          --index hd-index --model minilm
      search-cli benchmark --index hd-index --dataset homedepot --split dev --out hd-report
    """
    from shopsearch.benchmarks.report import write_report
    from shopsearch.benchmarks.runner import run_benchmark
    from shopsearch.cli.format import human_bytes
    from shopsearch.engine import SearchEngine
    from shopsearch.index.store import folder_size

    query_map, qrel_map = _labelled_queries(data, index_dir)
    wanted = [s.strip() for s in stages.split(",") if s.strip()]
    engine = SearchEngine.open(
        index_dir,
        reranker=reranker,
        use_reranker=bool({"rerank", "ltr"} & set(wanted)),
        load_encoder=bool({"dense", "hybrid", "rerank", "ltr"} & set(wanted)),
        spelling=spelling,
        # Latency is measured on queries the batch run has just seen: with a query-embedding
        # cache every single-query call would be a hit and the table would time the cache.
        cache_size=0,
    )
    retrievers = {}
    for stage in wanted:
        try:
            retrievers[stage] = engine.stage(stage)
        except SearchError as exc:
            click.echo(f"note: skipping stage {stage}: {exc}", err=True)
    if not retrievers:
        raise SearchError("none of the requested stages can run on this index")
    index_bytes = folder_size(Path(index_dir))
    report = run_benchmark(
        retrievers,
        query_map,
        qrel_map,
        depth=depth,
        out_dir=out_dir,
        latency_queries=latency_queries,
        progress=not as_json,
        extra={
            "index": str(index_dir),
            "index_bytes": index_bytes,
            "products": engine.index.manifest.products,
            "encoder": (engine.index.manifest.encoder or {}).get("name"),
            "reranker": engine.reranker.name if engine.reranker else None,
            "candidate_depth": engine.depth,
            "fusion": engine.fusion.to_dict(),
            "blend": engine.blend.to_dict() if engine.reranker else None,
            "analyzer": engine.index.manifest.analyzer,
            "spelling": spelling,
            "ltr": (engine.index.manifest.ltr or {}).get("trained_on") if "ltr" in wanted else None,
            "data": data.dataset or f"{data.queries} + {data.qrels}",
        },
    )
    paths = write_report(report, out_dir)
    if as_json:
        click.echo(paths["json"].read_text(encoding="utf-8"))
        return
    click.echo(report.to_markdown())
    click.echo(
        f"\nindex: {human_bytes(index_bytes)}; reports: "
        f"{paths['markdown']}, {paths['json']}, {paths['png']}"
    )


@cli.command("tune-fusion")
@click.option(
    "--index",
    "index_dir",
    default=DEFAULT_INDEX,
    show_default=True,
    type=click.Path(path_type=Path),
)
@_data_options
@click.option(
    "--metric",
    default="nDCG@10",
    show_default=True,
    help="What to maximise (any measure `benchmark` reports).",
)
@click.option(
    "--depth",
    type=int,
    default=None,
    help="Candidates per retriever (default: the index's candidate depth, which "
    "is what its hybrid stage fuses when serving); stored with the fusion.",
)
@click.option(
    "--write/--dry-run",
    default=True,
    show_default=True,
    help="Store the best setting in the index manifest.",
)
@click.option("--json", "as_json", is_flag=True)
def tune_fusion_cmd(
    index_dir: Path, data: DataArgs, metric: str, depth: int | None, write: bool, as_json: bool
) -> None:
    """Grid-search the fusion (RRF k and weights; convex alpha and normalisation) on judged
    queries and store the best in the index manifest.

    Tune on queries you will not report on (e.g. training queries), then benchmark on dev.
    """
    from shopsearch.benchmarks.report import format_table
    from shopsearch.benchmarks.tuning import store_fusion, tune_engine_fusion
    from shopsearch.engine import SearchEngine

    query_map, qrel_map = _labelled_queries(data, index_dir)
    engine = SearchEngine.open(index_dir, use_reranker=False, depth=depth)
    if engine.encoder is None:
        raise SearchError("this index has no dense part: there is nothing to fuse")
    qids = [q for q in query_map if q in qrel_map]
    result = tune_engine_fusion(engine, {q: query_map[q] for q in qids}, qrel_map, metric=metric)
    if write:
        store_fusion(Path(index_dir), result, len(qids), engine.depth)
    summary = {
        "metric": metric,
        "queries": len(qids),
        "before": result.current.to_dict(),
        "before_score": result.current_score,
        "best": result.best.to_dict(),
        "best_score": result.best_score,
        "written": write,
    }
    if as_json:
        _echo_json(summary)
        return
    top = sorted(result.table, key=lambda row: -row[1])[:10]
    rows = [
        [
            c.method,
            c.rrf_k if c.method == "rrf" else "-",
            ",".join(f"{w:g}" for w in c.weights) if c.method == "rrf" else "-",
            c.alpha if c.method == "convex" else "-",
            c.normalization if c.method == "convex" else "-",
            score,
        ]
        for c, score in top
    ]
    click.echo(
        format_table(rows, ["method", "rrf_k", "weights (bm25,dense)", "alpha", "norm", metric])
    )
    click.echo(
        f"\n{metric} on {len(qids)} queries: {result.current_score:.4f} with the "
        f"current setting -> {result.best_score:.4f} with the best"
        + (f"; written to {index_dir}/manifest.json" if write else " (dry run)")
    )


def _float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}") from None


@cli.command("tune-rerank")
@click.option(
    "--index",
    "index_dir",
    default=DEFAULT_INDEX,
    show_default=True,
    type=click.Path(path_type=Path),
)
@_data_options
@click.option(
    "--metric",
    default="nDCG@10",
    show_default=True,
    help="What to maximise (any measure `benchmark` reports).",
)
@click.option(
    "--weights",
    default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1",
    show_default=True,
    help="Reranker weights to try (1 = click-probability order, 0 = fused order).",
)
@click.option(
    "--tops",
    default="10,20,30,50",
    show_default=True,
    help="Rerank depths to try (fused candidates re-scored per query).",
)
@click.option(
    "--held-out",
    is_flag=True,
    help="Only the queries the installed reranker held out of its training (its "
    "dev and test split, listed in its training.json).",
)
@click.option(
    "--write/--dry-run",
    default=True,
    show_default=True,
    help="Store the best setting with the index's reranker in its manifest.",
)
@click.option("--json", "as_json", is_flag=True)
def tune_rerank_cmd(
    index_dir: Path,
    data: DataArgs,
    metric: str,
    weights: str,
    tops: str,
    held_out: bool,
    write: bool,
    as_json: bool,
) -> None:
    """Tune how the installed reranker's click logits blend with the fused score, and how many
    candidates it reranks, on judged queries; store the best in the index manifest.

    \b
    The final order is weight * z(click logit) + (1 - weight) * z(fused score) over the
    reranked candidates; the click probability shown is the calibrated one either way. Each
    query is scored by the cross-encoder once, so the whole grid costs one reranking pass.
    Tune on queries you will not report on (e.g. training queries the reranker did not see),
    then benchmark on dev.

    \b
    Example:
      search-cli tune-rerank --index hd-index --dataset homedepot --split train --held-out
    """
    from shopsearch.benchmarks.report import format_table
    from shopsearch.benchmarks.tuning import held_out_query_ids, store_blend, tune_engine_blend
    from shopsearch.engine import SearchEngine

    weight_grid = _float_list(weights)
    top_grid = [int(t) for t in _float_list(tops)]
    if (
        not weight_grid
        or not top_grid
        or not all(0 <= w <= 1 for w in weight_grid)
        or min(top_grid) < 1
    ):
        raise click.BadParameter("weights must lie in [0, 1] and tops be >= 1")
    query_map, qrel_map = _labelled_queries(data, index_dir)
    engine = SearchEngine.open(index_dir)
    if engine.reranker is None or engine.index.reranker_path is None:
        raise SearchError(
            f"{index_dir} has no installed reranker: train one with "
            "`search-cli train-reranker` first"
        )
    qids = [q for q in query_map if q in qrel_map]
    if held_out:
        qids = held_out_query_ids(engine.index.reranker_path, {q: query_map[q] for q in qids})
    result = tune_engine_blend(
        engine,
        {q: query_map[q] for q in qids},
        qrel_map,
        metric=metric,
        weights=weight_grid,
        tops=top_grid,
        progress=not as_json,
    )
    if write:
        store_blend(Path(index_dir), result, len(qids))
    summary = {
        "metric": metric,
        "queries": len(qids),
        "fused_score": result.fused_score,
        "best": result.best.to_dict(),
        "best_score": result.best_score,
        "pure_reranker": {str(c.top): s for c, s in result.table if c.weight == 1.0},
        "written": write,
    }
    if as_json:
        _echo_json(summary)
        return
    top = sorted(result.table, key=lambda row: -row[1])[:10]
    click.echo(format_table([[c.weight, c.top, s] for c, s in top], ["weight", "top", metric]))
    click.echo(
        f"\n{metric} on {len(qids)} queries: fused order {result.fused_score:.4f}; "
        f"best blend {result.best_score:.4f} (weight {result.best.weight:g}, top "
        f"{result.best.top})"
        + (f"; written to {index_dir}/manifest.json" if write else " (dry run)")
    )
    if result.best.weight == 0.0:
        click.echo("the reranker does not improve on the fused order on these queries")
