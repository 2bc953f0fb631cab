"""Reading and writing the plain-text benchmark files: queries (TSV or JSONL), TREC qrels and
TREC runs, in the formats trec_eval and ir_measures read.

Conventions
-----------
- Identifiers (query ids, product ids) are always ``str``, even when a file stores integers,
  and never hold whitespace (TREC files are whitespace-separated).
- Qrels are ``{query_id: {product_id: grade}}`` with integer grades; a grade >= 1 means
  relevant for the binary measures (see :mod:`shopsearch.benchmarks.metrics`).
- Runs are ``{query_id: {product_id: score}}``. Only the score orders a ranking (as in
  trec_eval); the rank column of a run file is informational.
- Malformed input raises :class:`~shopsearch.errors.DataError` naming the file, the 1-based
  line and the field, so the user can fix the file.

The labelled data set loaders built on these readers are in
:mod:`shopsearch.benchmarks.datasets`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from shopsearch.errors import DataError

PathLike = str | os.PathLike

_QUERY_ID_KEYS = ("query_id", "_id", "id", "qid")
_QUERY_TEXT_KEYS = ("query", "text")
_WHITESPACE = re.compile(r"\s")
# Files are decoded with errors="surrogateescape", which turns each byte that is not UTF-8 into
# one of these code points, so that the line holding it can be named.
_UNDECODABLE = re.compile("[\udc80-\udcff]")
# A JSON escape such as "\ud800" decodes to a lone surrogate, which no UTF-8 file can store.
_SURROGATE = re.compile("[\ud800-\udfff]")


# ---------------------------------------------------------------------------- helpers


def _open_text(path: Path, errors: str = "strict"):
    # utf-8-sig: files saved by spreadsheet tools often start with a BOM, which would otherwise
    # become part of the first query id.
    return open(path, encoding="utf-8-sig", errors=errors, newline="")


def _require_file(path: PathLike, what: str) -> Path:
    p = Path(path)
    if p.is_dir():
        raise DataError(f"is a directory, not a {what} file", path=str(p))
    if not p.is_file():
        raise DataError(f"{what} file not found", path=str(p))
    return p


def _utf8_lines(f: Iterable[str], path: Path) -> Iterator[str]:
    """The lines of a file opened with ``errors="surrogateescape"``; the first one that is
    not UTF-8 is an error naming it."""
    for number, raw in enumerate(f, start=1):
        bad = _UNDECODABLE.search(raw)
        if bad:
            raise DataError(
                f"not UTF-8 text (byte 0x{ord(bad.group()) - 0xDC00:02x} at column "
                f"{bad.start() + 1}); save the file as UTF-8",
                path=str(path),
                line=number,
            )
        yield raw


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` with line endings stripped, skipping blank lines."""
    with _open_text(path, errors="surrogateescape") as f:
        for number, raw in enumerate(_utf8_lines(f, path), start=1):
            line = raw.rstrip("\r\n")
            if line.strip():
                yield number, line


def _check_id(value: str, path: Path, line: int, field_name: str) -> str:
    if not value:
        raise DataError("empty identifier", path=str(path), line=line, field=field_name)
    if _WHITESPACE.search(value):
        # TREC qrels and runs are whitespace-separated: a benchmark could not write it back.
        raise DataError(
            f"identifier {value!r} contains whitespace, which TREC files cannot hold",
            path=str(path),
            line=line,
            field=field_name,
        )
    return value


def _parse_grade(text: str, path: Path, line: int, field_name: str = "grade") -> int:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise DataError(
            f"relevance grade {text!r} is not a number", path=str(path), line=line, field=field_name
        ) from None
    if not value.is_integer():
        # trec_eval reads grades as integers; silently truncating 0.5 would change results.
        raise DataError(
            f"relevance grade {text!r} is not an integer",
            path=str(path),
            line=line,
            field=field_name,
        )
    return int(value)


def _add_judgement(
    qrels: dict[str, dict[str, int]], qid: str, docid: str, grade: int, path: Path, line: int
) -> None:
    docs = qrels.setdefault(qid, {})
    previous = docs.get(docid)
    if previous is not None and previous != grade:
        raise DataError(
            f"query {qid!r} judges product {docid!r} twice with different grades "
            f"({previous} and {grade})",
            path=str(path),
            line=line,
        )
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
        # A DataError (a ValueError), as the id comes from the user's data, e.g. a catalogue.
        raise DataError(
            f"{what} {value!r} is empty or contains whitespace; TREC files cannot represent it"
        )
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
        for name, value in (("query_id", qid), ("query", text)):
            bad = _SURROGATE.search(value)
            if bad:
                raise DataError(
                    f"{bad.group()!r} is half of a UTF-16 pair (a broken \\u escape), not text",
                    path=str(p),
                    line=line,
                    field=name,
                )
        text = text.strip()
        if not text:
            raise DataError(f"query {qid!r} has empty text", path=str(p), line=line, field="query")
        if qid in queries and queries[qid] != text:
            raise DataError(
                f"query id {qid!r} appears twice with different texts",
                path=str(p),
                line=line,
                field="query_id",
            )
        queries[qid] = text

    if _looks_like_jsonl(p):
        for number, line in _lines(p):
            obj = _json_object(line, p, number)
            qid = _first_key(obj, _QUERY_ID_KEYS, p, number)
            text = _first_key(obj, _QUERY_TEXT_KEYS, p, number)
            for name, value in (("query_id", qid), ("query", text)):
                if isinstance(value, (dict, list, bool)):
                    raise DataError(
                        f"must be a string or a number, got {json.dumps(value)[:40]}",
                        path=str(p),
                        line=number,
                        field=name,
                    )
            add(str(qid).strip(), str(text), number)
    else:
        first = True
        for number, line in _lines(p):
            parts = line.split("\t", 1)
            if first:
                first = False
                if (
                    len(parts) == 2
                    and parts[0].strip().lower() in _QUERY_ID_KEYS
                    and parts[1].strip().lower() in _QUERY_TEXT_KEYS
                ):
                    continue
            if len(parts) != 2:
                raise DataError(
                    "expected 'query_id<TAB>query' (no tab found)", path=str(p), line=number
                )
            add(parts[0].strip(), parts[1], number)
    if not queries:
        raise DataError("no queries found", path=str(p))
    return queries


def write_queries(path: PathLike, queries: Mapping[str, str]) -> Path:
    """Write ``{query_id: query}`` as TSV ``query_id<TAB>query`` under a header line of the
    same names (which :func:`read_queries` skips, so a first query that looks like a header
    is kept); returns the path."""
    p = Path(path)
    with open(p, "w", encoding="utf-8", newline="\n") as f:
        f.write("query_id\tquery\n")
        for qid, text in queries.items():
            qid = _check_writable_id(qid, "query id")
            clean = " ".join(str(text).split())  # a tab or newline would break the TSV
            f.write(f"{qid}\t{clean}\n")
    return p


def _json_object(line: str, path: Path, number: int) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"invalid JSON ({exc.msg} at column {exc.colno})", path=str(path), line=number
        ) from None
    except (ValueError, RecursionError) as exc:
        # json.loads raises these for an integer of over 4300 digits and deep nesting.
        what = "nested too deep" if isinstance(exc, RecursionError) else "number too long"
        raise DataError(f"invalid JSON ({what})", path=str(path), line=number) from None
    if not isinstance(obj, dict):
        raise DataError("expected a JSON object", path=str(path), line=number)
    return obj


def _first_key(obj: Mapping[str, Any], keys: Sequence[str], path: Path, number: int) -> Any:
    for key in keys:
        value = obj.get(key)
        if value is not None:
            return value
    raise DataError(
        f"missing field (expected one of {', '.join(keys)})",
        path=str(path),
        line=number,
        field=keys[0],
    )


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
                raise DataError(
                    f"expected 3 tab-separated columns 'query-id corpus-id score',"
                    f" found {len(parts)}",
                    path=str(p),
                    line=number,
                )
            qid, docid, grade_text = (c.strip() for c in parts)
        else:
            parts = line.split()
            if len(parts) != 4:
                raise DataError(
                    f"expected 4 columns 'query_id 0 product_id grade', found {len(parts)}",
                    path=str(p),
                    line=number,
                )
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
                if isinstance(grade, float) and not float(grade).is_integer():
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
            raise DataError(
                f"expected 6 columns 'query_id Q0 product_id rank score tag', found {len(parts)}",
                path=str(p),
                line=number,
            )
        qid, _, docid, rank_text, score_text, _ = parts
        try:
            int(rank_text)
        except ValueError:
            raise DataError(
                f"rank {rank_text!r} is not an integer", path=str(p), line=number, field="rank"
            ) from None
        try:
            score = float(score_text)
        except ValueError:
            raise DataError(
                f"score {score_text!r} is not a number", path=str(p), line=number, field="score"
            ) from None
        if math.isnan(score):
            raise DataError("score is NaN", path=str(p), line=number, field="score")
        docs = run.setdefault(qid, {})
        if docid in docs:
            raise DataError(
                f"product {docid!r} appears twice for query {qid!r}",
                path=str(p),
                line=number,
                field="product_id",
            )
        docs[docid] = score
    return run


def write_run(
    path: PathLike,
    results: Mapping[str, Sequence[tuple[str, float]] | Mapping[str, float]],
    tag: str,
) -> Path:
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
