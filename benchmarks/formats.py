"""Readers and writers for benchmark data: queries, TREC qrels, TREC runs, labelled data sets.

Conventions
-----------
- Identifiers (query ids, product ids) are always ``str``, even when a file stores integers.
- Qrels are ``{query_id: {product_id: grade}}`` with integer grades; a grade >= 1 means
  relevant for the binary measures (see :mod:`shopsearch.benchmarks.metrics`).
- Runs are ``{query_id: {product_id: score}}``. Only the score orders a ranking (as in
  trec_eval); the rank column of a run file is informational.
- Malformed input raises :class:`~shopsearch.errors.DataError` naming the file, the 1-based
  line and the field, so the user can fix the file.

Data set loaders return a :class:`LabelledSet` whose products are catalogue dicts
(``{"id", "title", ...}`` with optional ``description``, ``brand``, ``category``,
``attributes``), the format the index builder reads.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shopsearch.errors import DataError

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

_QUERY_ID_KEYS = ("query_id", "_id", "id", "qid")
_QUERY_TEXT_KEYS = ("query", "text")
_WHITESPACE = re.compile(r"\s")


# ---------------------------------------------------------------------------- helpers

def _open_text(path: Path):
    # utf-8-sig: files saved by spreadsheet tools often start with a BOM, which would otherwise
    # become part of the first query id.
    return open(path, encoding="utf-8-sig", newline="")


def _require_file(path: PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} file not found", path=str(p))
    return p


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` with line endings stripped, skipping blank lines."""
    with _open_text(path) as f:
        for number, raw in enumerate(f, start=1):
            line = raw.rstrip("\r\n")
            if line.strip():
                yield number, line


def _check_id(value: str, path: Path, line: int, field_name: str) -> str:
    if not value:
        raise DataError("empty identifier", path=str(path), line=line, field=field_name)
    return value


def _parse_grade(text: str, path: Path, line: int, field_name: str = "grade") -> int:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"relevance grade {text!r} is not a number", path=str(path),
                        line=line, field=field_name) from None
    if not value.is_integer():
        # trec_eval reads grades as integers; silently truncating 0.5 would change results.
        raise DataError(f"relevance grade {text!r} is not an integer", path=str(path),
                        line=line, field=field_name)
    return int(value)


def _add_judgement(qrels: dict[str, dict[str, int]], qid: str, docid: str, grade: int,
                   path: Path, line: int) -> None:
    docs = qrels.setdefault(qid, {})
    previous = docs.get(docid)
    if previous is not None and previous != grade:
        raise DataError(f"query {qid!r} judges product {docid!r} twice with different grades "
                        f"({previous} and {grade})", path=str(path), line=line)
    docs[docid] = grade


def _looks_like_jsonl(path: Path) -> bool:
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return True
    if path.suffix.lower() in (".tsv", ".txt", ".tab"):
        return False
    for _, line in _lines(path):
        return line.lstrip().startswith("{")
    return False


def _check_writable_id(value: str, what: str) -> str:
    value = str(value)
    if not value or _WHITESPACE.search(value):
        # TREC files are whitespace-separated: such an id cannot be written back unambiguously.
        raise ValueError(f"{what} {value!r} is empty or contains whitespace; "
                         "TREC files cannot represent it")
    return value


# ---------------------------------------------------------------------------- queries

def read_queries(path: PathLike) -> dict[str, str]:
    """Read queries as ``{query_id: query}`` in file order.

    Formats, chosen by extension (``.jsonl``/``.json`` vs ``.tsv``/``.txt``) or else by
    content (a first line starting with ``{`` means JSONL):

    - TSV: ``query_id<TAB>query`` per line; a header line ``query_id<TAB>query`` (or
      ``qid``/``id`` and ``text``) is skipped. Further tabs belong to the query text.
    - JSONL: one object per line with the id in ``query_id``, ``_id``, ``id`` or ``qid`` and
      the text in ``query`` or ``text`` (BEIR's ``queries.jsonl`` works as is).

    Blank lines are skipped. A repeated id with the same text is tolerated; with a different
    text it is an error.
    """
    p = _require_file(path, "queries")
    queries: dict[str, str] = {}

    def add(qid: str, text: str, line: int) -> None:
        _check_id(qid, p, line, "query_id")
        text = text.strip()
        if not text:
            raise DataError(f"query {qid!r} has empty text", path=str(p), line=line,
                            field="query")
        if qid in queries and queries[qid] != text:
            raise DataError(f"query id {qid!r} appears twice with different texts",
                            path=str(p), line=line, field="query_id")
        queries[qid] = text

    if _looks_like_jsonl(p):
        for number, line in _lines(p):
            obj = _json_object(line, p, number)
            qid = _first_key(obj, _QUERY_ID_KEYS, p, number)
            text = _first_key(obj, _QUERY_TEXT_KEYS, p, number)
            add(str(qid).strip(), str(text), number)
    else:
        first = True
        for number, line in _lines(p):
            parts = line.split("\t", 1)
            if first:
                first = False
                if (len(parts) == 2 and parts[0].strip().lower() in _QUERY_ID_KEYS
                        and parts[1].strip().lower() in _QUERY_TEXT_KEYS):
                    continue
            if len(parts) != 2:
                raise DataError("expected 'query_id<TAB>query' (no tab found)", path=str(p),
                                line=number)
            add(parts[0].strip(), parts[1], number)
    if not queries:
        raise DataError("no queries found", path=str(p))
    return queries


def write_queries(path: PathLike, queries: Mapping[str, str]) -> Path:
    """Write ``{query_id: query}`` as TSV ``query_id<TAB>query``; returns the path."""
    p = Path(path)
    with open(p, "w", encoding="utf-8", newline="\n") as f:
        for qid, text in queries.items():
            qid = _check_writable_id(qid, "query id")
            clean = " ".join(str(text).split())  # a tab or newline would break the TSV
            f.write(f"{qid}\t{clean}\n")
    return p


def _json_object(line: str, path: Path, number: int) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON ({exc.msg} at column {exc.colno})", path=str(path),
                        line=number) from None
    if not isinstance(obj, dict):
        raise DataError("expected a JSON object", path=str(path), line=number)
    return obj


def _first_key(obj: Mapping[str, Any], keys: Sequence[str], path: Path, number: int) -> Any:
    for key in keys:
        value = obj.get(key)
        if value is not None:
            return value
    raise DataError(f"missing field (expected one of {', '.join(keys)})", path=str(path),
                    line=number, field=keys[0])


# ---------------------------------------------------------------------------- qrels

def read_qrels(path: PathLike) -> dict[str, dict[str, int]]:
    """Read relevance judgements as ``{query_id: {product_id: grade}}``.

    Accepted layouts (detected from the first line):

    - TREC: ``query_id iteration product_id grade``, whitespace-separated; the iteration
      column is ignored, as trec_eval does.
    - BEIR: tab-separated with a header ``query-id<TAB>corpus-id<TAB>score``.

    Grades must be integers (negative grades are kept; trec_eval treats them as not
    relevant). A pair judged twice with different grades is an error.
    """
    p = _require_file(path, "qrels")
    qrels: dict[str, dict[str, int]] = {}
    beir = False
    first = True
    for number, line in _lines(p):
        if first:
            first = False
            head = [c.strip().lower() for c in line.split("\t")]
            if head[:2] == ["query-id", "corpus-id"]:
                beir = True
                continue
        if beir:
            parts = line.split("\t")
            if len(parts) != 3:
                raise DataError(f"expected 3 tab-separated columns 'query-id corpus-id score',"
                                f" found {len(parts)}", path=str(p), line=number)
            qid, docid, grade_text = (c.strip() for c in parts)
        else:
            parts = line.split()
            if len(parts) != 4:
                raise DataError(f"expected 4 columns 'query_id 0 product_id grade', found "
                                f"{len(parts)}", path=str(p), line=number)
            qid, _, docid, grade_text = parts
        _check_id(qid, p, number, "query_id")
        _check_id(docid, p, number, "product_id")
        _add_judgement(qrels, qid, docid, _parse_grade(grade_text, p, number), p, number)
    if not qrels:
        raise DataError("no judgements found", path=str(p))
    return qrels


def write_qrels(path: PathLike, qrels: Mapping[str, Mapping[str, int]]) -> Path:
    """Write TREC qrels ``query_id 0 product_id grade``, queries in the given order and
    products sorted by id (deterministic files diff cleanly). Returns the path."""
    p = Path(path)
    with open(p, "w", encoding="utf-8", newline="\n") as f:
        for qid, docs in qrels.items():
            qid = _check_writable_id(qid, "query id")
            for docid in sorted(docs):
                grade = docs[docid]
                if isinstance(grade, float) and not grade.is_integer():
                    raise ValueError(f"grade {grade!r} of ({qid!r}, {docid!r}) is not an integer")
                f.write(f"{qid} 0 {_check_writable_id(docid, 'product id')} {int(grade)}\n")
    return p


# ---------------------------------------------------------------------------- runs

def read_run(path: PathLike) -> dict[str, dict[str, float]]:
    """Read a TREC run ``query_id Q0 product_id rank score tag`` as
    ``{query_id: {product_id: score}}``.

    The rank column must be an integer but is otherwise ignored: like trec_eval, only the
    score orders the ranking. A product listed twice for one query is an error (trec_eval
    refuses such runs too).
    """
    p = _require_file(path, "run")
    run: dict[str, dict[str, float]] = {}
    for number, line in _lines(p):
        parts = line.split()
        if len(parts) != 6:
            raise DataError(f"expected 6 columns 'query_id Q0 product_id rank score tag', found "
                            f"{len(parts)}", path=str(p), line=number)
        qid, _, docid, rank_text, score_text, _ = parts
        try:
            int(rank_text)
        except ValueError:
            raise DataError(f"rank {rank_text!r} is not an integer", path=str(p), line=number,
                            field="rank") from None
        try:
            score = float(score_text)
        except ValueError:
            raise DataError(f"score {score_text!r} is not a number", path=str(p), line=number,
                            field="score") from None
        if math.isnan(score):
            raise DataError("score is NaN", path=str(p), line=number, field="score")
        docs = run.setdefault(qid, {})
        if docid in docs:
            raise DataError(f"product {docid!r} appears twice for query {qid!r}", path=str(p),
                            line=number, field="product_id")
        docs[docid] = score
    return run


def write_run(path: PathLike,
              results: Mapping[str, Sequence[tuple[str, float]] | Mapping[str, float]],
              tag: str) -> Path:
    """Write a TREC run file ``query_id Q0 product_id rank score tag``; returns the path.

    ``results`` maps each query id to ``(product_id, score)`` pairs (or to a
    ``{product_id: score}`` dict). Each query's lines are sorted by ``(-score, product_id)``
    (the engine's deterministic order) and ranked from 1. Queries are written in the
    mapping's order; a query with no results writes no lines (trec_eval ``-c`` then counts it
    as 0, as :func:`~shopsearch.benchmarks.metrics.evaluate` does).

    Scores are written with ``repr`` (shortest round-tripping form), so reading the file back
    yields bit-identical floats: rounding to a few decimals would create ties that do not
    exist in memory and change what trec_eval computes.
    """
    tag = _check_writable_id(tag, "run tag")
    p = Path(path)
    with open(p, "w", encoding="utf-8", newline="\n") as f:
        for qid, hits in results.items():
            qid = _check_writable_id(qid, "query id")
            pairs = list(hits.items()) if isinstance(hits, Mapping) else list(hits)
            seen: set[str] = set()
            clean: list[tuple[str, float]] = []
            for docid, score in pairs:
                docid = _check_writable_id(docid, "product id")
                score = float(score)
                if math.isnan(score):
                    raise ValueError(f"score of product {docid!r} for query {qid!r} is NaN")
                if docid in seen:
                    raise ValueError(f"product {docid!r} appears twice for query {qid!r}")
                seen.add(docid)
                clean.append((docid, score))
            clean.sort(key=lambda pair: (-pair[1], pair[0]))
            for rank, (docid, score) in enumerate(clean, start=1):
                f.write(f"{qid} Q0 {docid} {rank} {score!r} {tag}\n")
    return p


# ---------------------------------------------------------------------------- data sets

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
        return {"name": self.name, "products": len(self.products), "queries": len(self.queries),
                "judgements": sum(len(d) for d in self.qrels.values()), **self.info}


def _product(pid: Any, title: Any, *, description: Any = None, brand: Any = None,
             category: Any = None, attributes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": str(pid).strip(), "title": _text(title)}
    for key, value in (("description", description), ("brand", brand), ("category", category)):
        value = _text(value)
        if value:
            out[key] = value
    attrs = {k: _text(v) for k, v in (attributes or {}).items() if _text(v)}
    if attrs:
        out["attributes"] = attrs
    return out


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _restrict_queries(queries: Mapping[str, str], qrels: Mapping[str, Any], path: Path,
                      ) -> dict[str, str]:
    missing = [q for q in qrels if q not in queries]
    if missing:
        raise DataError(f"{len(missing)} judged queries have no text (e.g. {missing[0]!r})",
                        path=str(path))
    return {q: queries[q] for q in qrels}


def _read_jsonl_products(path: Path, *, beir: bool) -> list[dict[str, Any]]:
    """Products from JSONL: BEIR's ``{_id, title, text}`` or the project's catalogue dicts."""
    products: list[dict[str, Any]] = []
    for number, line in _lines(path):
        obj = _json_object(line, path, number)
        pid = _text(_first_key(obj, ("_id", "id") if beir else ("id", "_id"), path, number))
        if not pid:
            raise DataError("empty product id", path=str(path), line=number, field="id")
        title = _text(obj.get("title"))
        if beir:
            body = _text(obj.get("text"))
            if not title and not body:
                raise DataError("document has neither title nor text", path=str(path),
                                line=number, field="text")
            # BEIR corpora often have no titles (MS MARCO, FiQA): the text becomes the title so
            # that every product has one, and is not repeated as description.
            products.append(_product(pid, title, description=body) if title
                            else _product(pid, body))
        else:
            if not title:
                raise DataError("missing or empty title", path=str(path), line=number,
                                field="title")
            product = {k: v for k, v in obj.items() if k not in ("_id",)}
            product["id"], product["title"] = pid, title
            products.append(product)
    return products


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
    queries = _restrict_queries(read_queries(_require_file(root / "queries.jsonl", "queries")),
                                qrels, root / "queries.jsonl")
    products = _read_jsonl_products(_require_file(root / "corpus.jsonl", "corpus"), beir=True)
    return LabelledSet(products, queries, qrels, name=f"{root.name}-{split}",
                       info={"format": "beir", "split": split})


#: ESCI label -> integer grade. The ESCI paper scores nDCG with gains E=1.0, S=0.1, C=0.01,
#: I=0; trec_eval's qrels hold integer grades and its nDCG gain is the grade itself, so we use
#: the order-preserving integers 3/2/1/0. Consequence: binary measures (Recall, MRR, P,
#: Success) count Exact, Substitute and Complement as relevant (grade >= 1); for "exact only"
#: evaluate with e.g. ``R(rel=3)@100``.
ESCI_GRADES = {"E": 3, "S": 2, "C": 1, "I": 0}

ESCI_EXAMPLES = "shopping_queries_dataset_examples.parquet"
ESCI_PRODUCTS = "shopping_queries_dataset_products.parquet"


def load_esci(folder_or_files: PathLike | Sequence[PathLike], split: str = "test",
              locale: str = "us", *, small: bool = False,
              corpus: str = "locale") -> LabelledSet:
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
            raise ValueError("load_esci expects a folder or exactly two files "
                             "(examples parquet, products parquet)")
        examples_path, products_path = files
    _require_file(examples_path, "ESCI examples")
    _require_file(products_path, "ESCI products")

    needed = ["query_id", "query", "product_id", "esci_label", "split", "product_locale"]
    if small:
        needed.append("small_version")
    examples = _read_parquet_columns(pq, examples_path, needed,
                                     equal={"split": split, "product_locale": locale})
    qrels: dict[str, dict[str, int]] = {}
    queries: dict[str, str] = {}
    n = len(examples["query_id"])
    for i in range(n):
        if small and not examples["small_version"][i]:
            continue
        qid, pid = _text(examples["query_id"][i]), _text(examples["product_id"][i])
        label = _text(examples["esci_label"][i]).upper()
        if label not in ESCI_GRADES:
            # Rows were filtered in Arrow, so name the example rather than a row number.
            raise DataError(f"unknown esci_label {label!r} for query {qid!r}, product {pid!r} "
                            "(expected E, S, C or I)", path=str(examples_path),
                            field="esci_label")
        queries[qid] = _text(examples["query"][i])
        if qrels.get(qid, {}).get(pid, ESCI_GRADES[label]) != ESCI_GRADES[label]:
            raise DataError(f"query {qid!r} judges product {pid!r} twice with different labels",
                            path=str(examples_path), field="esci_label")
        qrels.setdefault(qid, {})[pid] = ESCI_GRADES[label]
    if not qrels:
        raise DataError(f"no examples with split={split!r} and product_locale={locale!r}",
                        path=str(examples_path))

    prod_cols = _read_parquet_columns(pq, products_path, ["product_id", "product_locale",
                                                          "product_title"],
                                      optional=["product_description", "product_bullet_point",
                                                "product_brand", "product_color"],
                                      equal={"product_locale": locale})
    judged = {pid for docs in qrels.values() for pid in docs}
    products: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i in range(len(prod_cols["product_id"])):
        pid = _text(prod_cols["product_id"][i])
        if pid in seen or (corpus == "judged" and pid not in judged):
            continue
        seen.add(pid)
        description = _text(prod_cols["product_description"][i]) or \
            _text(prod_cols["product_bullet_point"][i])
        products.append(_product(pid, prod_cols["product_title"][i], description=description,
                                 brand=prod_cols["product_brand"][i],
                                 attributes={"color": prod_cols["product_color"][i]}))
    missing = judged - seen
    if missing:
        logger.warning("ESCI: %d judged products are missing from %s (e.g. %s); they count as "
                       "relevant but unretrievable", len(missing), products_path,
                       next(iter(sorted(missing))))
    name = f"esci-{locale}-{split}" + ("-small" if small else "")
    return LabelledSet(products, queries, qrels, name=name,
                       info={"format": "esci", "split": split, "locale": locale,
                             "corpus": corpus})


def _read_parquet_columns(pq: Any, path: Path, columns: list[str],
                          optional: Sequence[str] = (),
                          equal: Mapping[str, str] | None = None) -> dict[str, list[Any]]:
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
        raise DataError(f"missing column(s) {', '.join(missing)}", path=str(path),
                        field=missing[0])
    present = columns + [c for c in optional if c in schema_names]
    table = pq.read_table(path, columns=present)
    for name, value in (equal or {}).items():
        table = table.filter(pc.equal(table.column(name), value))
    out = {name: table.column(name).to_pylist() for name in present}
    n = table.num_rows
    for name in optional:
        out.setdefault(name, [None] * n)
    return out


#: WANDS label -> grade.
WANDS_GRADES = {"Exact": 2, "Partial": 1, "Irrelevant": 0}


def _read_tsv_dicts(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    # WANDS descriptions are long; the csv module's default field limit (128 kB) is too small
    # for a few of them.
    csv.field_size_limit(min(2**31 - 1, 1 << 27))
    with _open_text(path) as f:
        reader = csv.DictReader(f, delimiter="\t")
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(f"missing column(s) {', '.join(missing)} in header "
                            f"{'|'.join(header)}", path=str(path), line=1, field=missing[0])
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
        pid = _check_id(_text(row["product_id"]), product_path, line, "product_id")
        products.append(_product(pid, row["product_name"],
                                 description=row.get("product_description"),
                                 category=row.get("product_class")))
    all_queries: dict[str, str] = {}
    for line, row in _read_tsv_dicts(query_path, ["query_id", "query"]):
        qid = _check_id(_text(row["query_id"]), query_path, line, "query_id")
        all_queries[qid] = _text(row["query"])
    qrels: dict[str, dict[str, int]] = {}
    for line, row in _read_tsv_dicts(label_path, ["query_id", "product_id", "label"]):
        label = _text(row["label"])
        if label not in WANDS_GRADES:
            raise DataError(f"unknown label {label!r} (expected Exact, Partial or Irrelevant)",
                            path=str(label_path), line=line, field="label")
        qid = _check_id(_text(row["query_id"]), label_path, line, "query_id")
        pid = _check_id(_text(row["product_id"]), label_path, line, "product_id")
        _add_judgement(qrels, qid, pid, WANDS_GRADES[label], label_path, line)
    queries = _restrict_queries(all_queries, qrels, query_path)
    return LabelledSet(products, queries, qrels, name="wands", info={"format": "wands"})


def _read_two_col_tsv(path: Path, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for number, line in _lines(path):
        parts = line.split("\t", 1)
        if len(parts) != 2:
            raise DataError(f"expected '{what}_id<TAB>text' (no tab found)", path=str(path),
                            line=number)
        key = _check_id(parts[0].strip(), path, number, f"{what}_id")
        out[key] = parts[1].strip()
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
            raise DataError(f"expected 2 columns 'qid pid' or 4 columns 'qid 0 pid grade', "
                            f"found {len(parts)}", path=str(qrels_path), line=number)
        _add_judgement(qrels, qid, pid, grade, qrels_path, number)
    if not qrels:
        raise DataError("no judgements found", path=str(qrels_path))
    query_path = _require_file(root / f"{split}.query.txt", f"Multi-CPR queries ({split})")
    queries = _restrict_queries(_read_two_col_tsv(query_path, "query"), qrels, query_path)
    corpus_path = _require_file(root / "corpus.tsv", "Multi-CPR corpus")
    products = [_product(pid, text) for pid, text in
                _read_two_col_tsv(corpus_path, "passage").items()]
    return LabelledSet(products, queries, qrels, name=f"multicpr-{root.name}-{split}",
                       info={"format": "multicpr", "split": split})


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
    products = _read_jsonl_products(_require_file(root / "products.jsonl", "products"),
                                    beir=False)
    return LabelledSet(products, queries, qrels, name=f"{root.name}-{split}",
                       info={"format": "shopsearch", "split": split})


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
    raise DataError("unrecognised data set layout; expected BEIR (corpus.jsonl, queries.jsonl, "
                    "qrels/), ESCI parquet files, WANDS (product.csv, query.csv, label.csv), "
                    "Multi-CPR (corpus.tsv, <split>.query.txt, qrels.<split>.tsv) or "
                    "products.jsonl + queries.<split>.tsv + qrels.<split>.txt", path=str(root))


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
        raise DataError("data set folder not found (give a folder or one of "
                        f"{', '.join(KNOWN_DATASETS)})", path=str(path_or_name))
    fmt = detect_format(root)
    kwargs = {} if split is None else {"split": split}
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

