"""``search-cli update``, ``compact`` and ``check``: a live catalogue, changed in place.

Each is a thin shell over ``index/update.py`` and ``index/integrity.py``.
"""

from __future__ import annotations

from pathlib import Path

import click

from shopsearch.cli.main import DEFAULT_INDEX, _echo_json, cli
from shopsearch.errors import SearchError

_INDEX_OPTION = click.option(
    "--index",
    "index_dir",
    default=DEFAULT_INDEX,
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Index folder.",
)


def _compaction_line(summary) -> str:
    return (
        f"compacted {summary.segments_before} segments into {summary.segments} "
        f"({summary.rows_before - summary.products} deleted rows dropped) in "
        f"{summary.seconds:.2f} s; generation {summary.generation}"
    )


@cli.command("update")
@_INDEX_OPTION
@click.option(
    "--catalog",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Products to upsert (.jsonl or .csv, as for build-index): a new id is added, a "
    "known id replaced by this record (fields it leaves out are cleared).",
)
@click.option(
    "--delete",
    "delete_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Product ids to delete, one per line. Ids not in the index are reported and skipped.",
)
@click.option(
    "--no-compact",
    is_flag=True,
    help="Do not compact afterwards, even past 30% deleted rows or 10 segments.",
)
@click.option("--batch-size", default=64, show_default=True, help="Encoding batch size.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def update_cmd(
    index_dir: Path,
    catalog: Path | None,
    delete_file: Path | None,
    no_compact: bool,
    batch_size: int,
    as_json: bool,
) -> None:
    """Upsert and delete products in an index without rebuilding it.

    Only what changed is analysed and encoded (a product whose text is unchanged, e.g. only
    its price, keeps its vector); queries see the change as soon as the command returns, and
    BM25 scores equal a fresh build's of the new catalogue.

    \b
    Examples:
      search-cli update --index my-index --catalog changes.jsonl
      search-cli update --index my-index --delete discontinued.txt --json
    """
    from shopsearch.index.catalog import read_catalog
    from shopsearch.index.manifest import Manifest
    from shopsearch.index.update import read_ids, update_index

    if catalog is None and delete_file is None:
        raise SearchError("nothing to do: give --catalog (products to upsert) and/or --delete")
    upserts = read_catalog(catalog) if catalog is not None else []
    deletes = read_ids(delete_file) if delete_file is not None else []
    manifest = Manifest.read(index_dir)

    def load_encoder():
        from shopsearch.index.encoder import IndexHead, load_index_encoder

        if not as_json:
            click.echo(f"loading model {(manifest.encoder or {}).get('name')} ...", err=True)
        return load_index_encoder(IndexHead(index_dir, manifest))

    summary = update_index(
        index_dir,
        upserts,
        deletes,
        encoder=load_encoder if manifest.faiss is not None else None,
        batch_size=batch_size,
        compact=not no_compact,
    )
    if as_json:
        _echo_json(summary.to_dict())
        return
    if summary.generation == summary.generation_before:
        click.echo(f"{index_dir}: nothing changed (generation {summary.generation})")
    else:
        reencoded = f" ({len(summary.reencoded)} re-encoded)" if manifest.faiss else ""
        click.echo(
            f"Updated {index_dir} in {summary.seconds:.2f} s: {len(summary.added)} added, "
            f"{len(summary.replaced)} replaced{reencoded}, {len(summary.unchanged)} unchanged, "
            f"{len(summary.deleted)} deleted; {summary.products} products in "
            f"{summary.segments} segment(s), generation {summary.generation}"
        )
    if summary.not_found:
        shown = ", ".join(summary.not_found[:5]) + (" ..." if len(summary.not_found) > 5 else "")
        click.echo(
            f"note: {len(summary.not_found)} id(s) to delete not in the index, skipped: {shown}"
        )
    if summary.compaction is not None:
        click.echo(f"{summary.compaction.reason}: {_compaction_line(summary.compaction)}")


@cli.command("compact")
@_INDEX_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def compact_cmd(index_dir: Path, as_json: bool) -> None:
    """Merge an index's segments into one, dropping deleted rows (nothing is re-encoded)."""
    from shopsearch.index.update import compact_index

    summary = compact_index(index_dir)
    if as_json:
        _echo_json(summary.to_dict())
    elif summary.compacted:
        click.echo(f"{index_dir}: {_compaction_line(summary)}")
    else:
        click.echo(
            f"{index_dir} is already compact: one segment, no deleted rows "
            f"(generation {summary.generation})"
        )


@cli.command("check")
@_INDEX_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check_cmd(index_dir: Path, as_json: bool) -> None:
    """Verify every file of an index (sizes, sha256) and its structure against its manifest.

    Prints one line per problem and exits with 2, or "ok: ..." and exits with 0.
    """
    from shopsearch.index.integrity import check_index

    report = check_index(index_dir)
    if as_json:
        _echo_json(report.to_dict())
    elif report.ok:
        click.echo(
            f"ok: {report.products} products in {report.segments} segment(s), "
            f"generation {report.generation}"
        )
    else:
        for problem in report.problems:
            click.echo(problem)
    if not report.ok:
        click.get_current_context().exit(2)
