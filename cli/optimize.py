"""``search-cli optimize-reranker``: the index's reranker on a fast runtime, installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from shopsearch.cli.main import DEFAULT_INDEX, _echo_json, cli
from shopsearch.errors import SearchError


def read_query_texts(path: Path) -> list[str]:
    """Query texts of a query file (TSV or JSONL with ids), or the distinct queries of a click
    log (JSONL impressions, as `search-cli demo` and the server write), in file order."""
    from shopsearch.benchmarks.trec import read_queries
    from shopsearch.errors import DataError

    try:
        return list(read_queries(path).values())
    except DataError as not_queries:
        from shopsearch.training.clicks import read_click_log

        try:
            return list(dict.fromkeys(i.query for i in read_click_log(path)))
        except DataError:
            raise not_queries from None


def candidate_lists(engine: Any, queries_file: Path, limit: int, say: Any) -> list:
    """(query, product texts) of the hybrid candidates the reranker scores for each query."""
    queries = read_query_texts(queries_file)[:limit]
    top = (engine.index.manifest.reranker or {}).get("blend", {}).get("top", 30)
    say(f"candidates: the top {top} hybrid results of {len(queries)} queries")
    hits = engine.stage("hybrid").search(queries, top)
    return [(q, [engine.product_texts[h.product_id] for h in hs]) for q, hs in zip(queries, hits)]


def _open_with_reranker(index_dir: Path) -> tuple[Any, Path]:
    from shopsearch.engine import SearchEngine

    engine = SearchEngine.open(index_dir, use_reranker=False, use_ltr=False, cache_size=0)
    source = engine.index.reranker_path
    if source is None:
        raise SearchError(
            f"index {index_dir} has no reranker; train one with "
            f"`search-cli train-reranker --index {index_dir}`"
        )
    return engine, source


@cli.command("optimize-reranker")
@click.option(
    "--index",
    "index_dir",
    default=DEFAULT_INDEX,
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Index whose reranker is exported; its candidates are the calibration data.",
)
@click.option(
    "--runtime",
    type=click.Choice(
        [
            "onnx",
            "onnx-int8",
            "onnx-int8-static",
            "openvino",
            "openvino-bf16",
            "openvino-int8-static",
        ]
    ),
    default="onnx-int8",
    show_default=True,
    help="Runtime to export to (README 'Speed' compares them).",
)
@click.option(
    "--queries",
    "queries_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Queries whose candidate lists calibrate the export and measure its agreement with "
    "fp32: TSV `query_id<TAB>query`, JSONL, or a click log. Use training queries, never "
    "evaluation ones.",
)
@click.option(
    "--limit",
    default=300,
    show_default=True,
    help="Queries used: two thirds calibrate, one third checks agreement.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write the exported reranker folder (default: beside the index, "
    "<index>-reranker-<runtime>).",
)
@click.option(
    "--install/--no-install",
    default=True,
    show_default=True,
    help="Install the export into the index (a new generation; the tuned blend is kept).",
)
@click.option(
    "--encoder-runtime",
    type=click.Choice(["torch", "onnx", "openvino"]),
    help="Also serve the query tower on this runtime (fp32: the product vectors stay valid); "
    "recorded in the manifest.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the agreement as JSON.")
def optimize_reranker_cmd(
    index_dir: Path,
    runtime: str,
    queries_file: Path,
    limit: int,
    out: Path | None,
    install: bool,
    encoder_runtime: str | None,
    as_json: bool,
) -> None:
    """Export the index's cross-encoder to ONNX Runtime or OpenVINO, optionally int8.

    Static int8 is calibrated on the engine's own inputs: the hybrid candidates (the ones the
    reranker scores when serving) of the given queries, Chinese or English as the catalogue
    is. The click-probability calibration is refitted for the exported logits, and the
    agreement with the fp32 PyTorch model (top-10 overlap, same top-10 order, Spearman) is
    measured on held-out queries and printed.

    \b
    Example:
      search-cli optimize-reranker --index hd-index --runtime onnx-int8 \\
          --queries ../shared/data/homedepot/queries.train.tsv
    """
    from dataclasses import asdict

    from shopsearch.index.manifest import Manifest
    from shopsearch.index.store import install_reranker
    from shopsearch.rerank.export import export_reranker

    engine, source = _open_with_reranker(index_dir)
    say = (lambda msg: None) if as_json else (lambda msg: click.echo(msg, err=True))
    lists = candidate_lists(engine, queries_file, limit, say)
    out = out or index_dir.parent / f"{index_dir.name}-reranker-{runtime}"
    say(f"exporting {source} to {runtime} in {out} ...")
    agreement = export_reranker(source, runtime, lists, out)
    if install:
        # The export ranks as the model it came from (the agreement says how closely), so it
        # keeps that model's tuned blend, in the same generation that installs it.
        record = Manifest.read(index_dir).reranker or {}
        install_reranker(
            index_dir,
            out,
            keep={
                "blend": record.get("blend"),
                "runtime": runtime,
                "exported_from": record.get("path"),
            },
        )
    if encoder_runtime is not None:
        from shopsearch.index.store import update_manifest

        encoder = Manifest.read(index_dir).encoder
        if encoder is None:
            raise SearchError(f"index {index_dir} has no dense part: no query tower to speed up")
        update_manifest(index_dir, encoder={**encoder, "runtime": encoder_runtime})
    report = {"runtime": runtime, "out": str(out), "installed": install, **asdict(agreement)}
    if as_json:
        _echo_json(report)
        return
    click.echo(
        f"{runtime}: top-10 overlap with fp32 {agreement.top10_overlap:.3f}, same top-10 "
        f"order in {agreement.top10_same_order:.1%} of {agreement.lists} held-out lists, "
        f"median Spearman {agreement.spearman_median:.4f}, click-probability MAE "
        f"{agreement.probability_mae:.4f}" + (f"; installed in {index_dir}" if install else "")
    )


@cli.command("distill-reranker")
@click.option(
    "--index",
    "index_dir",
    default=DEFAULT_INDEX,
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Index whose reranker is the teacher; its candidates are the training data.",
)
@click.option(
    "--queries",
    "queries_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Training queries (TSV, JSONL or a click log); no labels needed, never evaluation "
    "queries.",
)
@click.option("--limit", default=2000, show_default=True, help="Queries used (a tenth held out).")
@click.option("--layers", default=2, show_default=True, help="Transformer layers of the student.")
@click.option("--epochs", default=1, show_default=True)
@click.option("--lr", default=1e-4, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--install/--no-install", default=False, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def distill_reranker_cmd(
    index_dir: Path,
    queries_file: Path,
    limit: int,
    layers: int,
    epochs: int,
    lr: float,
    out: Path,
    install: bool,
    as_json: bool,
) -> None:
    """Distil the index's reranker into a student with fewer layers.

    The student is the teacher's embeddings and first --layers layers, trained to reproduce
    the teacher's logits on the hybrid candidates of the given queries, then calibrated to the
    teacher's click probabilities. Export it with `optimize-reranker` for int8 on top.

    \b
    Example:
      search-cli distill-reranker --index hd-index --layers 2 --out hd-student \\
          --queries ../shared/data/homedepot/queries.train.tsv --limit 2000
    """
    from dataclasses import asdict

    from shopsearch.index.manifest import Manifest
    from shopsearch.index.store import install_reranker
    from shopsearch.training.distill import DistillationConfig, distill_reranker

    engine, source = _open_with_reranker(index_dir)
    say = (lambda msg: None) if as_json else (lambda msg: click.echo(msg, err=True))
    lists = candidate_lists(engine, queries_file, limit, say)
    result = distill_reranker(
        source,
        lists,
        out,
        DistillationConfig(layers=layers, epochs=epochs, learning_rate=lr),
        progress=not as_json,
    )
    if install:
        record = Manifest.read(index_dir).reranker or {}
        install_reranker(
            index_dir,
            out,
            keep={"blend": record.get("blend"), "distilled_from": record.get("path")},
        )
    report = {**asdict(result), "out_dir": str(result.out_dir), "installed": install}
    if as_json:
        _echo_json(report)
        return
    click.echo(
        f"{layers}-layer student in {out}: held-out logit MSE to the teacher "
        f"{result.teacher_student_mse_before:.3f} -> {result.teacher_student_mse_after:.3f}, "
        f"median Spearman {result.spearman_median_after:.4f}, top-10 overlap "
        f"{result.top10_overlap_after:.3f} on {result.held_out_pairs} held-out pairs"
    )
