"""``search-cli``: build an index, search it, list models. Training and benchmark commands live
in ``cli/train.py`` and ``cli/bench.py``. Each command is a thin shell over library calls and
imports the heavy modules (torch, faiss, transformers) only when it runs."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import click

from shopsearch import __version__
from shopsearch.errors import SearchError

DEFAULT_INDEX = "search-index"
DEFAULT_MODEL = "e5-small"


class FriendlyGroup(click.Group):
    """Turns the project's own errors into a one-line message and exit code 2, not a
    traceback; anything else is a bug and keeps its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SearchError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


def _quiet_libraries(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("jieba").setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not verbose:
        # transformers' per-tensor "Loading weights" bar is noise in a CLI; our own encoding
        # and training progress bars are separate and stay.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        # transformers sets its own log level from this variable when first imported.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        import jieba

        jieba.setLogLevel(logging.WARNING)
    except ImportError:  # pragma: no cover - jieba is a dependency
        pass
    if not verbose:
        for name in ("transformers", "sentence_transformers", "huggingface_hub", "faiss"):
            logging.getLogger(name).setLevel(logging.ERROR)


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="shopsearch")
@click.option("-v", "--verbose", is_flag=True, help="Log what each stage is doing.")
def cli(verbose: bool) -> None:
    """Product search for e-commerce, in Chinese and English.

    \b
    Quick start on the built-in (synthetic) demo catalogue:
      search-cli build-index                 # demo catalogue -> ./search-index
      search-cli query "夏季连衣裙"
      search-cli query "king poster bed" --explain
      search-cli demo                        # every stage, incl. a fine-tuned reranker

    \b
    Your own catalogue (JSONL or CSV: id, title[, description, brand, category, price,
    attributes]):
      search-cli build-index --catalog products.jsonl --index my-index
      search-cli query "cordless drill" --index my-index --max-price 100 --json
    """
    _quiet_libraries(verbose)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=2))


@cli.command("build-index")
@click.option(
    "--catalog",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Catalogue file (.jsonl or .csv). Default: the built-in demo catalogue.",
)
@click.option(
    "--index",
    "index_dir",
    default=DEFAULT_INDEX,
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Index folder to write.",
)
@click.option(
    "--model",
    default=DEFAULT_MODEL,
    show_default=True,
    help="Bi-encoder for the dense part: a name from `search-cli models`, a local "
    "model folder, or a Hugging Face id.",
)
@click.option("--no-dense", is_flag=True, help="BM25 only: skip the dense part (fast).")
@click.option(
    "--factory",
    default=None,
    help="FAISS factory string, e.g. 'IDMap,Flat' or 'IDMap,HNSW32,Flat'. Default: "
    "exact below 200,000 products, HNSW above.",
)
@click.option("--batch-size", default=64, show_default=True, help="Encoding batch size.")
@click.option(
    "--runtime",
    type=click.Choice(["torch", "onnx", "openvino"]),
    default="onnx",
    show_default=True,
    help="How the bi-encoder runs, for encoding the catalogue and then every query: PyTorch, "
    "ONNX Runtime or OpenVINO, all fp32 (vectors equal to 1e-5). Recorded in the manifest; "
    "see README 'Speed' for the measured choice.",
)
@click.option(
    "--reranker",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="A fine-tuned cross-encoder folder to store in the index.",
)
@click.option(
    "--normalise-units",
    is_flag=True,
    help="Analyser option: write numbers, sizes and units one way (1/2 inch = 1/2 in. = "
    "1/2in, 2 x 4 = 2x4) at index and query time. Recorded in the manifest.",
)
@click.option(
    "--fold-traditional",
    is_flag=True,
    help="Analyser option: fold traditional Chinese characters to simplified before "
    "segmentation. Recorded in the manifest.",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[ADDRESS]",
    help="Build a sharded index on Ray workers: alone, on a Ray started on this machine; "
    "with ADDRESS (from `ray start --head`, or 'auto'), on that cluster. Needs "
    '`pip install -e ".[ray]"`.',
)
@click.option(
    "--shards",
    type=int,
    help="With --ray: shards to split the catalogue into (default: the number of Ray workers).",
)
@click.option(
    "--ray-workers",
    type=int,
    help="With --ray: worker actors, each loading the "
    "model once (default: one per CPU of the cluster).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def build_index_cmd(
    catalog: Path | None,
    index_dir: Path,
    model: str,
    no_dense: bool,
    factory: str | None,
    batch_size: int,
    runtime: str,
    reranker: Path | None,
    normalise_units: bool,
    fold_traditional: bool,
    ray_address: str | None,
    shards: int | None,
    ray_workers: int | None,
    as_json: bool,
) -> None:
    """Build (or atomically rebuild) a search index from a catalogue.

    A new index is written to a temporary folder and renamed into place; over an existing
    index the build is published as its next generation, so the old one stays usable (and
    served) until the new one is complete, and survives a failed or killed build. For a few
    changed products, `search-cli update` is faster.
    """
    from shopsearch.index.catalog import read_catalog
    from shopsearch.index.store import build_index

    if catalog is None:
        from shopsearch.demo.catalog import generate_catalog

        products, source = generate_catalog(), "built-in synthetic demo catalogue"
    else:
        products, source = read_catalog(catalog), str(catalog)
    say = (lambda msg: None) if as_json else (lambda msg: click.echo(msg, err=True))
    say(f"{len(products)} products from {source}")
    if ray_address is None and (shards is not None or ray_workers is not None):
        raise SearchError("--shards and --ray-workers go with --ray (a sharded build on Ray)")
    if ray_address is not None:
        from shopsearch.cli.format import human_bytes
        from shopsearch.distributed.build import ModelEncoder, build_with_ray
        from shopsearch.retrieval.analysis import Analyzer

        sharded = build_with_ray(
            products,
            index_dir,
            address=ray_address,
            workers=ray_workers,
            shards=shards,
            make_encoder=None if no_dense else ModelEncoder(model),
            analyzer=Analyzer(units=normalise_units, fold_traditional=fold_traditional),
            factory=factory,
            batch_size=batch_size,
            source=source,
            copy_reranker_from=reranker,
            show_progress=not as_json,
            on_stage=say,
        )
        if as_json:
            _echo_json(sharded.to_dict())
            return
        per_worker = sharded.products_per_worker_second
        click.echo(
            f"Built {sharded.path}: {sharded.products} products in {sharded.shards} shards "
            f"on {sharded.workers} Ray worker(s) in {sharded.seconds:.1f} s"
            + (f", {per_worker:.0f} products/s per worker" if per_worker else "")
            + f", {sharded.overhead_seconds:.1f} s not encoding; "
            f"{human_bytes(sharded.bytes_on_disk)} on disk"
            + (f"; FAISS {sharded.factory}" if sharded.factory else "; BM25 only")
        )
        return
    encoder = None
    if not no_dense:
        from shopsearch.retrieval.encoders import SentenceTransformerEncoder

        say(f"loading model {model} ({runtime}) ...")
        encoder = SentenceTransformerEncoder(model, runtime=runtime)
    from shopsearch.retrieval.analysis import Analyzer

    summary = build_index(
        products,
        index_dir,
        encoder=encoder,
        analyzer=Analyzer(units=normalise_units, fold_traditional=fold_traditional),
        factory=factory,
        batch_size=batch_size,
        show_progress=not as_json,
        source=source,
        copy_reranker_from=reranker,
        on_stage=say,
    )
    if as_json:
        _echo_json(summary.to_dict())
        return
    from shopsearch.cli.format import human_bytes

    rate = (
        f", encoded {summary.texts_per_second:.0f} products/s" if summary.texts_per_second else ""
    )
    click.echo(
        f"Built {summary.path}: {summary.products} products in {summary.seconds:.1f} s"
        f"{rate}; {human_bytes(summary.bytes_on_disk)} on disk"
        + (f"; FAISS {summary.factory}" if summary.factory else "; BM25 only")
    )


def _fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@cli.command("query")
@click.argument("text")
@click.option("-k", "k", default=10, show_default=True, help="How many products to show.")
@click.option(
    "--index",
    "index_dir",
    default=DEFAULT_INDEX,
    show_default=True,
    type=click.Path(path_type=Path),
    help="Index folder.",
)
@click.option("--category", help="Only this category (whole name or one level of it).")
@click.option("--min-price", type=float, help="Lowest price, inclusive.")
@click.option("--max-price", type=float, help="Highest price, inclusive.")
@click.option("--reranker", help="Cross-encoder folder to rerank with (overrides the index's).")
@click.option("--no-rerank", is_flag=True, help="Skip the reranker even if the index has one.")
@click.option(
    "--stage",
    type=click.Choice(["bm25", "dense", "hybrid", "rerank", "ltr"]),
    help="Stop the pipeline after this stage (default: the full pipeline, i.e. "
    "ltr when the index has a learning-to-rank model, else rerank when it has a "
    "reranker, else hybrid). `benchmark` measures exactly these stages.",
)
@click.option(
    "--candidates",
    "depth",
    type=int,
    help="Candidates taken from each retriever before fusion (default: the "
    "index's candidate depth, 100 unless tune-fusion stored another).",
)
@click.option(
    "--rerank-top",
    type=int,
    help="Fused candidates the reranker re-scores (default: the tuned depth stored "
    "with the index's reranker, else 50).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--explain", is_flag=True, help="Show per-stage timings and matched terms.")
@click.option(
    "--spelling",
    is_flag=True,
    help="Correct query words the catalogue does not know against its vocabulary (the "
    "original words are searched too); --explain and --json say what was corrected.",
)
def query_cmd(
    text: str,
    k: int,
    index_dir: Path,
    category: str | None,
    min_price: float | None,
    max_price: float | None,
    reranker: str | None,
    no_rerank: bool,
    stage: str | None,
    depth: int | None,
    rerank_top: int | None,
    as_json: bool,
    explain: bool,
    spelling: bool,
) -> None:
    """Search the index for TEXT (Chinese, English or both).

    \b
    Examples:
      search-cli query "夏季连衣裙"
      search-cli query "king poster bed" -k 5 --explain
      search-cli query "nightstand" --category Furniture --max-price 300 --json
    """
    from shopsearch.engine import SearchEngine, check_query
    from shopsearch.retrieval.filters import Filters

    # Checked before opening the index so that a typo costs no model load.
    check_query(text)
    if no_rerank and stage == "rerank":
        raise SearchError("--no-rerank and --stage rerank contradict each other")
    filters = Filters(category=category, min_price=min_price, max_price=max_price)
    engine = SearchEngine.open(
        index_dir,
        reranker=reranker,
        use_reranker=not no_rerank and stage in (None, "rerank", "ltr"),
        load_encoder=stage != "bm25",
        depth=depth,
        rerank_top=rerank_top,
        spelling=spelling,
    )
    result = engine.search(text, k=k, filters=filters, explain=explain, stage=stage)
    if as_json:
        _echo_json(result.to_dict())
        return
    from shopsearch.cli.format import clip, table

    headers = ["#", "id", "title", "price", "bm25", "dense", "fused"]
    if result.reranked:
        headers.append("p(click)")
    rows = []
    for rank, hit in enumerate(result.hits, start=1):
        product = result.products[hit.product_id]
        row = [
            str(rank),
            hit.product_id,
            clip(product.title, 48),
            _fmt(product.price, 2),
            _fmt(hit.scores.get("bm25"), 2),
            _fmt(hit.scores.get("dense")),
            _fmt(hit.scores.get("fused"), 4),
        ]
        if result.reranked:
            row.append(_fmt(hit.scores.get("click_probability")))
        rows.append(row)
    if rows:
        click.echo(table(headers, rows, [True, False, False] + [True] * (len(headers) - 3)))
    else:
        click.echo("no products found")
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    if explain:
        click.echo(f"\nquery terms (BM25): {' '.join(result.query_terms) or '(none)'}")
        if result.corrections:
            fixes = ", ".join(f"{c['term']} -> {c['suggestion']}" for c in result.corrections)
            click.echo(f"did you mean: {fixes} (both searched)")
        for hit in result.hits:
            matched = ", ".join(result.matched_terms.get(hit.product_id, [])) or "-"
            click.echo(f"  {hit.product_id}: matched {matched}")
        timings = ", ".join(f"{name} {ms:.1f} ms" for name, ms in result.timings_ms.items())
        click.echo(f"timings: {timings}")


@cli.command("models")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models_cmd(as_json: bool) -> None:
    """List the built-in models, their languages, size and whether they are ready.

    Any local sentence-transformers / transformers folder or Hugging Face id also works
    wherever a model is asked for (a hub id needs a network or a filled HF cache).
    """
    from shopsearch.models.registry import list_models

    infos = list_models()
    if as_json:
        _echo_json(
            [
                {
                    k: getattr(m, k)
                    for k in (
                        "name",
                        "description",
                        "languages",
                        "dim",
                        "path",
                        "size_bytes",
                        "ready",
                        "licence",
                    )
                }
                for m in infos
            ]
        )
        return
    from shopsearch.cli.format import human_bytes, table

    rows = [
        [
            m.name,
            m.languages,
            str(m.dim),
            human_bytes(m.size_bytes) if m.size_bytes else "-",
            "yes" if m.ready else "built on first use",
            m.description,
        ]
        for m in infos
    ]
    click.echo(table(["name", "languages", "dim", "size", "ready", "description"], rows))


def main() -> None:  # pragma: no cover - console entry point
    cli(prog_name="search-cli")


def _register_subcommands() -> None:
    # Training and benchmark commands are defined in their own modules; importing them here
    # is cheap because they import torch and friends inside the commands.
    for module in (
        "shopsearch.cli.train",
        "shopsearch.cli.bench",
        "shopsearch.cli.demo",
        "shopsearch.cli.serve",
        "shopsearch.cli.catalog",
        "shopsearch.cli.ltr",
        "shopsearch.cli.optimize",
    ):
        try:
            __import__(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


_register_subcommands()
