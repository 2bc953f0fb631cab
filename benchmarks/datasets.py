"""Labelled benchmark data sets: loaders for BEIR, Amazon ESCI, Wayfair WANDS, Multi-CPR and the
project's own layout (used for Home Depot), each returning a :class:`LabelledSet` of products,
queries and graded judgements; plus finding a data set folder and detecting its layout.

Products are catalogue dicts (``{"id", "title", ...}`` with optional ``description``,
``brand``, ``category``, ``price``, ``attributes``), validated by the catalogue's own
:func:`~shopsearch.index.catalog.record_to_product`, so a benchmark's products are exactly what
``build-index`` accepts from a catalogue file. Identifiers are ``str`` and qrels are
``{query_id: {product_id: grade}}``, as in :mod:`shopsearch.benchmarks.trec`.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shopsearch.benchmarks.trec import (
    PathLike,
    _add_judgement,
    _check_id,
    _first_key,
    _json_object,
    _lines,
    _open_text,
    _parse_grade,
    _require_file,
    _utf8_lines,
    read_qrels,
    read_queries,
)
from shopsearch.errors import DataError
from shopsearch.index.catalog import record_to_product

logger = logging.getLogger(__name__)


@dataclass
class LabelledSet:
    """A labelled benchmark: a catalogue, queries and graded judgements.

    ``products``: catalogue dicts ``{"id", "title", ...}``; ``queries``: ``{query_id: text}``
    (only queries of the chosen split); ``qrels``: ``{query_id: {product_id: grade}}``;
    ``name``: e.g. ``"homedepot-dev"``.
    """

    products: list[dict[str, Any]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    name: str
    info: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Counts for logs and reports."""
        return {
            "name": self.name,
            "products": len(self.products),
            "queries": len(self.queries),
            "judgements": sum(len(d) for d in self.qrels.values()),
            **self.info,
        }


# ---------------------------------------------------------------------------- helpers


def _cell(value: Any) -> str:
    """A table cell as stripped text, ``""`` when missing (None, or the NaN that tools writing
    missing numbers leave behind)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _record(pid: Any, title: Any, **fields: Any) -> dict[str, Any]:
    """A raw catalogue record from a loader's columns, for :func:`_product` to validate.

    Missing cells are left out (attributes too, one by one) rather than handed on, where the
    validator would turn a None into an empty field but a NaN into the text ``"nan"``.
    """
    record: dict[str, Any] = {"id": pid, "title": title}
    for name, value in fields.items():
        if isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if _cell(v)}
            if value:
                record[name] = value
        elif _cell(value):
            record[name] = value
    return record


def _product(record: dict[str, Any], path: Path, line: int | None) -> dict[str, Any]:
    # One product normaliser in the project: whatever the catalogue would reject, a benchmark
    # rejects too, with the same message.
    return record_to_product(record, str(path), line).to_dict()


def _restrict_queries(
    queries: Mapping[str, str],
    qrels: Mapping[str, Any],
    path: Path,
) -> dict[str, str]:
    missing = [q for q in qrels if q not in queries]
    if missing:
        raise DataError(
            f"{len(missing)} judged queries have no text (e.g. {missing[0]!r})", path=str(path)
        )
    return {q: queries[q] for q in qrels}


def _read_jsonl_products(path: Path, *, beir: bool) -> list[dict[str, Any]]:
    """Products from JSONL: BEIR's ``{_id, title, text}`` or the project's catalogue dicts."""
    products: list[dict[str, Any]] = []
    for number, line in _lines(path):
        obj = _json_object(line, path, number)
        pid = _first_key(obj, ("_id", "id") if beir else ("id", "_id"), path, number)
        if beir:
            title, body = obj.get("title"), obj.get("text")
            if not _cell(title) and not _cell(body):
                raise DataError(
                    "document has neither title nor text", path=str(path), line=number, field="text"
                )
            # BEIR corpora often have no titles (MS MARCO, FiQA): the text becomes the title so
            # that every product has one, and is not repeated as description.
            record = _record(pid, title, description=body) if _cell(title) else _record(pid, body)
        else:
            record = {k: v for k, v in obj.items() if k != "_id"}
            record["id"] = pid
        products.append(_product(record, path, number))
    return products


# ---------------------------------------------------------------------------- BEIR


def load_beir(folder: PathLike, split: str = "test") -> LabelledSet:
    """Load a BEIR-format data set: ``corpus.jsonl`` (``_id``, ``title``, ``text``),
    ``queries.jsonl`` (``_id``, ``text``) and ``qrels/<split>.tsv`` (header
    ``query-id corpus-id score``).

    Products are ``{"id": _id, "title": title, "description": text}``; a document without a
    title uses its text as title. Only queries judged in ``split`` are returned.
    """
    root = Path(folder)
    qrels_path = _require_file(root / "qrels" / f"{split}.tsv", f"BEIR qrels ({split} split)")
    qrels = read_qrels(qrels_path)
    queries = _restrict_queries(
        read_queries(_require_file(root / "queries.jsonl", "queries")),
        qrels,
        root / "queries.jsonl",
    )
    products = _read_jsonl_products(_require_file(root / "corpus.jsonl", "corpus"), beir=True)
    return LabelledSet(
        products,
        queries,
        qrels,
        name=f"{root.name}-{split}",
        info={"format": "beir", "split": split},
    )


# ---------------------------------------------------------------------------- ESCI

#: ESCI label -> integer grade. The ESCI paper scores nDCG with gains E=1.0, S=0.1, C=0.01,
#: I=0; trec_eval's qrels hold integer grades and its nDCG gain is the grade itself, so we use
#: the order-preserving integers 3/2/1/0. Consequence: binary measures (Recall, MRR, P,
#: Success) count Exact, Substitute and Complement as relevant (grade >= 1); for "exact only"
#: evaluate with e.g. ``R(rel=3)@100``.
ESCI_GRADES = {"E": 3, "S": 2, "C": 1, "I": 0}

ESCI_EXAMPLES = "shopping_queries_dataset_examples.parquet"
ESCI_PRODUCTS = "shopping_queries_dataset_products.parquet"


def load_esci(
    folder_or_files: PathLike | Sequence[PathLike],
    split: str = "test",
    locale: str = "us",
    *,
    small: bool = False,
    corpus: str = "locale",
) -> LabelledSet:
    """Load Amazon's Shopping Queries data set (ESCI) from its two parquet files.

    ``folder_or_files``: the folder holding ``shopping_queries_dataset_examples.parquet`` and
    ``shopping_queries_dataset_products.parquet``, or the two paths (examples first).
    Examples are filtered on ``split`` ("train"/"test") and ``product_locale`` (``locale``:
    "us", "es", "jp"); ``small=True`` keeps only ``small_version == 1`` (the reduced set of
    the ESCI task 1). Grades follow :data:`ESCI_GRADES` (E=3, S=2, C=1, I=0).

    ``corpus``: "locale" (default) indexes every product of the locale in the products file,
    a real retrieval setting; "judged" keeps only products judged for the selected queries
    (small and fast, but a re-ranking-like setting where every product was a candidate).
    Products: ``id``, ``title`` = product_title, ``description`` = product_description (or
    the bullet points when there is no description), ``brand``, ``attributes.color``.
    """
    if corpus not in ("locale", "judged"):
        raise ValueError(f"corpus must be 'locale' or 'judged', not {corpus!r}")
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow is a dev dependency
        raise DataError("reading ESCI needs pyarrow: pip install pyarrow") from exc

    if isinstance(folder_or_files, (str, os.PathLike)):
        root = Path(folder_or_files)
        examples_path, products_path = root / ESCI_EXAMPLES, root / ESCI_PRODUCTS
    else:
        files = [Path(f) for f in folder_or_files]
        if len(files) != 2:
            raise ValueError(
                "load_esci expects a folder or exactly two files "
                "(examples parquet, products parquet)"
            )
        examples_path, products_path = files
    _require_file(examples_path, "ESCI examples")
    _require_file(products_path, "ESCI products")

    needed = ["query_id", "query", "product_id", "esci_label", "split", "product_locale"]
    if small:
        needed.append("small_version")
    examples = _read_parquet_columns(
        pq, examples_path, needed, equal={"split": split, "product_locale": locale}
    )
    qrels: dict[str, dict[str, int]] = {}
    queries: dict[str, str] = {}
    n = len(examples["query_id"])
    for i in range(n):
        if small and not examples["small_version"][i]:
            continue
        qid, pid = _cell(examples["query_id"][i]), _cell(examples["product_id"][i])
        label = _cell(examples["esci_label"][i]).upper()
        if label not in ESCI_GRADES:
            # Rows were filtered in Arrow, so name the example rather than a row number.
            raise DataError(
                f"unknown esci_label {label!r} for query {qid!r}, product {pid!r} "
                "(expected E, S, C or I)",
                path=str(examples_path),
                field="esci_label",
            )
        queries[qid] = _cell(examples["query"][i])
        if qrels.get(qid, {}).get(pid, ESCI_GRADES[label]) != ESCI_GRADES[label]:
            raise DataError(
                f"query {qid!r} judges product {pid!r} twice with different labels",
                path=str(examples_path),
                field="esci_label",
            )
        qrels.setdefault(qid, {})[pid] = ESCI_GRADES[label]
    if not qrels:
        raise DataError(
            f"no examples with split={split!r} and product_locale={locale!r}",
            path=str(examples_path),
        )

    prod_cols = _read_parquet_columns(
        pq,
        products_path,
        ["product_id", "product_locale", "product_title"],
        optional=["product_description", "product_bullet_point", "product_brand", "product_color"],
        equal={"product_locale": locale},
    )
    judged = {pid for docs in qrels.values() for pid in docs}
    products: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i in range(len(prod_cols["product_id"])):
        pid = _cell(prod_cols["product_id"][i])
        if pid in seen or (corpus == "judged" and pid not in judged):
            continue
        seen.add(pid)
        description = prod_cols["product_description"][i]
        if not _cell(description):
            description = prod_cols["product_bullet_point"][i]
        record = _record(
            pid,
            prod_cols["product_title"][i],
            description=description,
            brand=prod_cols["product_brand"][i],
            attributes={"color": prod_cols["product_color"][i]},
        )
        # No line number: rows were filtered in Arrow, so a row index would point nowhere.
        products.append(_product(record, products_path, None))
    missing = judged - seen
    if missing:
        logger.warning(
            "ESCI: %d judged products are missing from %s (e.g. %s); they count as "
            "relevant but unretrievable",
            len(missing),
            products_path,
            next(iter(sorted(missing))),
        )
    name = f"esci-{locale}-{split}" + ("-small" if small else "")
    return LabelledSet(
        products,
        queries,
        qrels,
        name=name,
        info={"format": "esci", "split": split, "locale": locale, "corpus": corpus},
    )


def _read_parquet_columns(
    pq: Any,
    path: Path,
    columns: list[str],
    optional: Sequence[str] = (),
    equal: Mapping[str, str] | None = None,
) -> dict[str, list[Any]]:
    """Columns of a parquet file as Python lists, keeping only rows where each column in
    ``equal`` has the given value (filtered in Arrow first: the ESCI products file holds 1.8M
    rows of long descriptions, most of them for other locales)."""
    import pyarrow.compute as pc

    try:
        schema_names = set(pq.read_schema(path).names)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise DataError(f"cannot read parquet file: {exc}", path=str(path)) from exc
    missing = [c for c in columns if c not in schema_names]
    if missing:
        raise DataError(f"missing column(s) {', '.join(missing)}", path=str(path), field=missing[0])
    present = columns + [c for c in optional if c in schema_names]
    table = pq.read_table(path, columns=present)
    for name, value in (equal or {}).items():
        table = table.filter(pc.equal(table.column(name), value))
    out = {name: table.column(name).to_pylist() for name in present}
    n = table.num_rows
    for name in optional:
        out.setdefault(name, [None] * n)
    return out


# ---------------------------------------------------------------------------- WANDS

#: WANDS label -> grade.
WANDS_GRADES = {"Exact": 2, "Partial": 1, "Irrelevant": 0}


def _read_tsv_dicts(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    # WANDS descriptions are long; the csv module's default field limit (128 kB) is too small
    # for a few of them.
    csv.field_size_limit(min(2**31 - 1, 1 << 27))
    with _open_text(path, errors="surrogateescape") as f:
        reader = csv.DictReader(_utf8_lines(f, path), delimiter="\t")
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(
                f"missing column(s) {', '.join(missing)} in header {'|'.join(header)}",
                path=str(path),
                line=1,
                field=missing[0],
            )
        for row in reader:
            yield reader.line_num, row


def load_wands(folder: PathLike) -> LabelledSet:
    """Load Wayfair's WANDS: ``product.csv``, ``query.csv`` and ``label.csv`` (tab-separated
    despite the extension), in ``folder`` or its ``dataset/`` subfolder (the repository's
    layout).

    Grades: Exact=2, Partial=1, Irrelevant=0. Products: ``id`` = product_id, ``title`` =
    product_name, ``description`` = product_description, ``category`` = product_class.
    WANDS has no split: all 480 queries are returned.
    """
    root = Path(folder)
    if not (root / "label.csv").is_file() and (root / "dataset" / "label.csv").is_file():
        root = root / "dataset"
    product_path = _require_file(root / "product.csv", "WANDS product")
    query_path = _require_file(root / "query.csv", "WANDS query")
    label_path = _require_file(root / "label.csv", "WANDS label")

    products = []
    for line, row in _read_tsv_dicts(product_path, ["product_id", "product_name"]):
        record = _record(
            row["product_id"],
            row["product_name"],
            description=row.get("product_description"),
            category=row.get("product_class"),
        )
        products.append(_product(record, product_path, line))
    all_queries: dict[str, str] = {}
    for line, row in _read_tsv_dicts(query_path, ["query_id", "query"]):
        qid = _check_id(_cell(row["query_id"]), query_path, line, "query_id")
        all_queries[qid] = _cell(row["query"])
    qrels: dict[str, dict[str, int]] = {}
    for line, row in _read_tsv_dicts(label_path, ["query_id", "product_id", "label"]):
        label = _cell(row["label"])
        if label not in WANDS_GRADES:
            raise DataError(
                f"unknown label {label!r} (expected Exact, Partial or Irrelevant)",
                path=str(label_path),
                line=line,
                field="label",
            )
        qid = _check_id(_cell(row["query_id"]), label_path, line, "query_id")
        pid = _check_id(_cell(row["product_id"]), label_path, line, "product_id")
        _add_judgement(qrels, qid, pid, WANDS_GRADES[label], label_path, line)
    queries = _restrict_queries(all_queries, qrels, query_path)
    return LabelledSet(products, queries, qrels, name="wands", info={"format": "wands"})


# ---------------------------------------------------------------------------- Multi-CPR


def _read_two_col_tsv(path: Path, what: str) -> dict[str, tuple[int, str]]:
    """``{id: (line_number, text)}``; a repeated id keeps its first position and its last text."""
    out: dict[str, tuple[int, str]] = {}
    for number, line in _lines(path):
        parts = line.split("\t", 1)
        if len(parts) != 2:
            raise DataError(
                f"expected '{what}_id<TAB>text' (no tab found)", path=str(path), line=number
            )
        key = _check_id(parts[0].strip(), path, number, f"{what}_id")
        out[key] = (number, parts[1].strip())
    return out


def load_multicpr(folder: PathLike, split: str = "dev") -> LabelledSet:
    """Load a Multi-CPR domain folder (e.g. the e-commerce one).

    Files: ``corpus.tsv`` (``pid<TAB>passage``), ``<split>.query.txt`` (``qid<TAB>query``)
    and ``qrels.<split>.tsv``, either 4 columns ``qid<TAB>0<TAB>pid<TAB>grade`` or 2 columns
    ``qid<TAB>pid`` (grade 1). Products are ``{"id": pid, "title": passage}`` (Multi-CPR
    e-commerce passages are product titles).
    """
    root = Path(folder)
    qrels_path = _require_file(root / f"qrels.{split}.tsv", f"Multi-CPR qrels ({split})")
    qrels: dict[str, dict[str, int]] = {}
    for number, line in _lines(qrels_path):
        parts = line.split()
        if len(parts) == 2:
            qid, pid, grade = parts[0], parts[1], 1
        elif len(parts) == 4:
            qid, pid, grade = parts[0], parts[2], _parse_grade(parts[3], qrels_path, number)
        else:
            raise DataError(
                f"expected 2 columns 'qid pid' or 4 columns 'qid 0 pid grade', found {len(parts)}",
                path=str(qrels_path),
                line=number,
            )
        _add_judgement(qrels, qid, pid, grade, qrels_path, number)
    if not qrels:
        raise DataError("no judgements found", path=str(qrels_path))
    query_path = _require_file(root / f"{split}.query.txt", f"Multi-CPR queries ({split})")
    all_queries = {qid: text for qid, (_, text) in _read_two_col_tsv(query_path, "query").items()}
    queries = _restrict_queries(all_queries, qrels, query_path)
    corpus_path = _require_file(root / "corpus.tsv", "Multi-CPR corpus")
    products = [
        _product(_record(pid, text), corpus_path, number)
        for pid, (number, text) in _read_two_col_tsv(corpus_path, "passage").items()
    ]
    return LabelledSet(
        products,
        queries,
        qrels,
        name=f"multicpr-{root.name}-{split}",
        info={"format": "multicpr", "split": split},
    )


# ---------------------------------------------------------------------------- Home Depot


def load_homedepot(folder: PathLike, split: str = "dev") -> LabelledSet:
    """Load the project's own layout (used for Home Depot): ``products.jsonl``
    (``{"id", "title", ...}``), ``queries.<split>.tsv`` and TREC ``qrels.<split>.txt``.

    Only queries of ``split`` that have judgements are returned (queries without any
    judgement cannot be scored).
    """
    root = Path(folder)
    qrels = read_qrels(_require_file(root / f"qrels.{split}.txt", f"qrels ({split})"))
    query_path = _require_file(root / f"queries.{split}.tsv", f"queries ({split})")
    all_queries = read_queries(query_path)
    unjudged = len(all_queries) - sum(1 for q in all_queries if q in qrels)
    if unjudged:
        logger.info("%s: %d queries have no judgements and are left out", query_path, unjudged)
    queries = _restrict_queries(all_queries, qrels, query_path)
    products = _read_jsonl_products(_require_file(root / "products.jsonl", "products"), beir=False)
    return LabelledSet(
        products,
        queries,
        qrels,
        name=f"{root.name}-{split}",
        info={"format": "shopsearch", "split": split},
    )


# ---------------------------------------------------------------------------- finding a data set

#: Data sets the loaders know by name; looked up under ``$SHOPSEARCH_DATA`` and then under
#: ``../shared/data`` next to the project root.
KNOWN_DATASETS = ("homedepot",)


def _data_roots() -> list[Path]:
    roots = []
    env = os.environ.get("SHOPSEARCH_DATA")
    if env:
        roots.append(Path(env))
    roots.append(Path(__file__).resolve().parent.parent.parent / "shared" / "data")
    roots.append(Path.cwd().parent / "shared" / "data")
    return roots


def detect_format(folder: PathLike) -> str:
    """Name the layout of a data set folder: "beir", "esci", "wands", "multicpr" or
    "shopsearch" (products.jsonl + queries.<split>.tsv + qrels.<split>.txt)."""
    root = Path(folder)
    if (root / "corpus.jsonl").is_file() and (root / "qrels").is_dir():
        return "beir"
    if (root / ESCI_EXAMPLES).is_file():
        return "esci"
    if (root / "label.csv").is_file() or (root / "dataset" / "label.csv").is_file():
        return "wands"
    if (root / "corpus.tsv").is_file() and any(root.glob("*.query.txt")):
        return "multicpr"
    if (root / "products.jsonl").is_file() and any(root.glob("qrels.*.txt")):
        return "shopsearch"
    raise DataError(
        "unrecognised data set layout; expected BEIR (corpus.jsonl, queries.jsonl, "
        "qrels/), ESCI parquet files, WANDS (product.csv, query.csv, label.csv), "
        "Multi-CPR (corpus.tsv, <split>.query.txt, qrels.<split>.tsv) or "
        "products.jsonl + queries.<split>.tsv + qrels.<split>.txt",
        path=str(root),
    )


def load_dataset(path_or_name: PathLike, split: str | None = None) -> LabelledSet:
    """Load a labelled data set from a folder, detecting its layout (:func:`detect_format`),
    or by name (``"homedepot"``) from the shared data folder.

    ``split=None`` uses each loader's default (BEIR/ESCI "test", Multi-CPR and Home Depot
    "dev"; WANDS has no split and rejects any other value than None).
    """
    root = Path(path_or_name)
    if not root.exists() and str(path_or_name) in KNOWN_DATASETS:
        for base in _data_roots():
            if (base / str(path_or_name)).is_dir():
                root = base / str(path_or_name)
                break
    if not root.is_dir():
        raise DataError(
            f"data set folder not found (give a folder or one of {', '.join(KNOWN_DATASETS)})",
            path=str(path_or_name),
        )
    fmt = detect_format(root)
    kwargs: dict[str, Any] = {} if split is None else {"split": split}
    if fmt == "beir":
        return load_beir(root, **kwargs)
    if fmt == "esci":
        return load_esci(root, **kwargs)
    if fmt == "wands":
        if split is not None:
            raise DataError(f"WANDS has no splits; got split={split!r}", path=str(root))
        return load_wands(root)
    if fmt == "multicpr":
        return load_multicpr(root, **kwargs)
    return load_homedepot(root, **kwargs)
