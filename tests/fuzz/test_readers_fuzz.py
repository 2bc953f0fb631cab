"""Fuzzed readers: whatever a file holds, a reader returns a valid result or raises the project's
one-line ``DataError`` naming the file (and the line, when the problem is on one), never another
exception and never a hang. Plus write/read round trips for arbitrary valid values.

Each property writes one file per example into a module-wide folder (hypothesis does not mix
with function-scoped fixtures such as ``tmp_path``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shopsearch.benchmarks.datasets import load_wands
from shopsearch.benchmarks.trec import (
    read_qrels,
    read_queries,
    read_run,
    write_qrels,
    write_queries,
    write_run,
)
from shopsearch.cli.main import cli
from shopsearch.errors import DataError, IndexLoadError
from shopsearch.index.catalog import (
    catalog_hash,
    read_catalog,
    read_products,
    record_to_product,
    write_products,
)
from shopsearch.index.store import build_index, load_index
from shopsearch.retrieval.filters import FilterIndex
from shopsearch.retrieval.types import Product
from shopsearch.training.clicks import Impression, click_labels, read_click_log, write_click_log
from shopsearch.training.propensity import propensity_at

FUZZ = settings(
    max_examples=100,
    deadline=None,  # the machine is shared; hangs are caught by time_limit instead
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Messages of problems that belong to the whole file, not to one line.
FILE_LEVEL = ("is empty", "no impressions", "no queries", "no judgements", "not found")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@contextmanager
def time_limit(seconds: float = 10.0) -> Iterator[None]:
    """Fail an example that runs for more than ``seconds`` (a hang) instead of waiting."""

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check_error(exc: DataError, path: Path, *, min_line: int = 1) -> None:
    """A user-facing error: one line, naming the file, and ``file:line`` when on a line."""
    message = str(exc)
    assert message.splitlines() == [message], message
    assert exc.path == str(path) and message.startswith(str(path)), message
    if exc.line is None:
        assert min_line == 1 and any(kind in message for kind in FILE_LEVEL), message
        return
    assert message.startswith(f"{path}:{exc.line}"), message
    assert min_line <= exc.line <= max(1, len(path.read_bytes().splitlines())), message


def read_or_error(reader: Callable[[Path], Any], path: Path, *, min_line: int = 1) -> Any:
    """``reader(path)``, or ``None`` once its ``DataError`` has passed :func:`check_error`.
    Any other exception fails the example."""
    with time_limit():
        try:
            return reader(path)
        except DataError as exc:
            check_error(exc, path, min_line=min_line)
            return None


# ------------------------------------------------------------------ what valid results look like


def check_products(products: list[Product], workdir: Path) -> None:
    assert products
    ids = [p.id for p in products]
    assert len(set(ids)) == len(ids)
    for p in products:
        assert isinstance(p.id, str) and p.id and p.id == p.id.strip()
        assert isinstance(p.title, str) and p.title and p.title == p.title.strip()
        assert p.price is None or (
            type(p.price) is float and math.isfinite(p.price) and p.price >= 0
        )
        assert all(isinstance(v, str) for v in (p.description, p.brand, p.category))
        assert isinstance(p.attributes, dict)
    catalog_hash(products)
    FilterIndex(products)
    # What build-index stores must read back as the same products.
    stored = workdir / "stored-products.jsonl"
    write_products(products, stored)
    as_json = [json.dumps(p.to_dict(), sort_keys=True) for p in products]
    assert [json.dumps(p.to_dict(), sort_keys=True) for p in read_products(stored)] == as_json


def check_impressions(impressions: list[Impression], workdir: Path) -> None:
    assert impressions
    for imp in impressions:
        assert isinstance(imp.query, str) and imp.query.strip()
        assert isinstance(imp.product_id, str) and imp.product_id.strip()
        assert type(imp.position) is int and imp.position >= 1
        assert type(imp.clicked) is bool and type(imp.purchased) is bool
        assert imp.clicked or not imp.purchased
        assert all(v is None or isinstance(v, str) for v in (imp.session_id, imp.user_id))
        assert imp.timestamp is None or isinstance(imp.timestamp, str)
    click_labels(impressions, aggregate=True)
    propensity_at([imp.position for imp in impressions], np.ones(10))
    copy = workdir / "copy-clicks.jsonl"
    write_click_log(impressions, copy)
    assert read_click_log(copy) == impressions


def check_queries(queries: dict[str, str]) -> None:
    assert queries
    for qid, text in queries.items():
        assert isinstance(qid, str) and qid and not any(c.isspace() for c in qid)
        assert isinstance(text, str) and text and text == text.strip()
        (qid + text).encode("utf-8")


def check_qrels(qrels: dict[str, dict[str, int]]) -> None:
    assert qrels
    for qid, docs in qrels.items():
        assert isinstance(qid, str) and qid and docs
        for docid, grade in docs.items():
            assert isinstance(docid, str) and docid and type(grade) is int
        write_qrels(Path(os.devnull), {qid: docs})  # a benchmark can write them back


def check_run(run: dict[str, dict[str, float]]) -> None:
    for qid, docs in run.items():
        assert isinstance(qid, str) and qid and docs
        for docid, score in docs.items():
            assert isinstance(docid, str) and docid
            assert type(score) is float and not math.isnan(score)


# ------------------------------------------------------------------ strategies

# Characters that trip parsers: line breaks of every kind, NUL, BOM, quotes, separators,
# full-width forms, CJK, emoji, lone surrogates.
ODD = list("\t\r\n\x00\x0b\x0c\x1c\x85\u2028\u2029\ufeff\u200b\"',;:{}[]\\ １２ＡＢ连衣裙😀") + [
    "\ud800",
    "\udfff",
]
chars = st.one_of(st.characters(), st.characters(categories=["Cs"]), st.sampled_from(ODD))
texts = st.one_of(
    st.text(chars, max_size=12),
    st.sampled_from(
        ["", " ", "NaN", "Infinity", "-1", "0", "1e400", "1,000", "1_000", "null", "true", "x"]
    ),
)
numbers = st.one_of(
    st.integers(),
    st.floats(),
    st.sampled_from([-1, 0, 1, 2, 2**63, 10**20, 10**400, -(10**400), 0.5, -0.0, 1e308]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)
# Raw JSON text that json.dumps would never write but a file may hold.
RAW_JSON = [
    "NaN",
    "-Infinity",
    "1e999",
    "1" * 5000,  # over Python's 4300-digit limit for int()
    "[" * 3000 + "]" * 3000,  # deeper than json's recursion limit
    '"\\ud800"',
    '"\\udc00\\ud800"',
    '"\\ud83d\\ude00"',  # a valid pair: an emoji
    '"' + "x" * 200_000 + '"',
    "{}",
    "[]",
    "01",
    "'single'",
]
RAW = "\x01raw\x01"  # placeholder value replaced by a RAW_JSON fragment after serialising
JUNK = st.one_of(st.sampled_from(["\x00", "\r", "\ufeff", "\\", '"', "{", "}", ",", "\t"]), texts)


@st.composite
def json_line(draw: st.DrawFn, good: dict[str, Any], fields: tuple[str, ...]) -> str:
    """``good`` with some fields deleted or replaced by odd values, serialised as one line
    that may then be cut or have junk spliced in."""
    record: Any = dict(good)
    for name in draw(st.lists(st.sampled_from(fields + ("other",)), unique=True, max_size=4)):
        how = draw(st.sampled_from(("delete", "value", "value", "raw")))
        if how == "delete":
            record.pop(name, None)
        else:
            record[name] = draw(json_values) if how == "value" else RAW
    if draw(st.integers(0, 9)) == 0:
        record = draw(json_values)  # not an object at all
    line = json.dumps(record, ensure_ascii=draw(st.booleans()))
    while json.dumps(RAW) in line:
        line = line.replace(json.dumps(RAW), draw(st.sampled_from(RAW_JSON)), 1)
    how = draw(st.sampled_from(("keep", "keep", "cut", "splice")))
    at = draw(st.integers(0, len(line)))
    if how == "cut":
        line = line[:at]
    elif how == "splice":
        line = line[:at] + draw(JUNK) + line[at:]
    return line


def to_file(lines: list[str], draw: st.DrawFn) -> bytes:
    """Lines joined with LF or CRLF, maybe a BOM, encoded as UTF-8 (lone surrogates become
    the invalid bytes a broken encoder would write)."""
    end = draw(st.sampled_from(("\n", "\r\n")))
    text = end.join(lines) + draw(st.sampled_from((end, "")))
    if draw(st.booleans()):
        text = "\ufeff" + text
    return text.encode("utf-8", "surrogatepass")


def spliced(good: bytes) -> st.SearchStrategy[bytes]:
    """A valid file with random bytes written over or into it."""
    return st.tuples(st.integers(0, len(good)), st.binary(max_size=8), st.booleans()).map(
        lambda t: good[: t[0]] + t[1] + good[t[0] + (len(t[1]) if t[2] else 0) :]
    )


def any_bytes(good: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=400), spliced(good))


# ------------------------------------------------------------------ arbitrary bytes

CATALOG_JSONL = (
    '{"id": "p1", "title": "夏季连衣裙", "price": 199, "attributes": {"season": "summer"}}\n'
    '{"id": "p2", "title": "King poster bed", "brand": "Oak & Co", "price": "1,299.00"}\n'
).encode()
CATALOG_CSV = 'id,title,price,attributes\np1,夏季连衣裙,199,"{""season"": ""summer""}"\n'.encode()
CLICKS = (
    '{"query": "bed", "product_id": "p2", "position": 1, "clicked": 1, "purchased": 1}\n'
    '{"query": "连衣裙", "product_id": 1, "position": 2, "clicked": false, "user_id": 7}\n'
).encode()
QUERIES_TSV = "query_id\tquery\nq1\t夏季连衣裙\nq2\tking bed\n".encode()
QUERIES_JSONL = '{"_id": "q1", "text": "夏季连衣裙"}\n{"id": 2, "query": "bed"}\n'.encode()
QRELS = b"q1 0 p1 2\nq1 0 p2 0\nq2\t0\tp3\t1\n"
RUN = b"q1 Q0 p1 1 0.9 bm25\nq1 Q0 p2 2 -1.5e-3 bm25\n"


def _valid(name: str) -> Callable[[Any, Path], None]:
    return {
        "catalog": check_products,
        "clicks": check_impressions,
        "queries": lambda r, _: check_queries(r),
        "qrels": lambda r, _: check_qrels(r),
        "run": lambda r, _: check_run(r),
    }[name]


BYTE_CASES = [
    ("catalog", read_catalog, "c.jsonl", CATALOG_JSONL),
    ("catalog", read_catalog, "c.csv", CATALOG_CSV),
    ("catalog", read_catalog, "c.tsv", CATALOG_CSV.replace(b",", b"\t")),
    ("clicks", read_click_log, "clicks.jsonl", CLICKS),
    ("queries", read_queries, "q.tsv", QUERIES_TSV),
    ("queries", read_queries, "q.jsonl", QUERIES_JSONL),
    ("queries", read_queries, "q.data", QUERIES_JSONL),  # format detected from the content
    ("qrels", read_qrels, "qrels.txt", QRELS),
    ("run", read_run, "r.run", RUN),
]


@pytest.mark.parametrize("kind, reader, name, good", BYTE_CASES, ids=[c[2] for c in BYTE_CASES])
@FUZZ
@given(data=st.data())
def test_arbitrary_bytes_give_a_result_or_a_one_line_error(workdir, kind, reader, name, good, data):
    path = workdir / name
    path.write_bytes(data.draw(any_bytes(good), label="content"))
    result = read_or_error(reader, path)
    if result is not None:
        _valid(kind)(result, workdir)


def test_the_valid_files_above_are_valid(workdir):
    for kind, reader, name, good in BYTE_CASES:
        path = workdir / name
        path.write_bytes(good)
        _valid(kind)(reader(path), workdir)


# ------------------------------------------------------------------ catalogue

GOOD_PRODUCT = {
    "id": "p1",
    "title": "Cordless drill 18V 电钻",
    "description": "Two batteries",
    "brand": "Acme",
    "category": "Tools > Drills",
    "price": 59.9,
    "attributes": {"voltage": "18V"},
}
PRODUCT_FIELDS = tuple(GOOD_PRODUCT)


@st.composite
def catalog_jsonl(draw: st.DrawFn) -> bytes:
    lines = [json.dumps(dict(GOOD_PRODUCT, id="good"), ensure_ascii=False)]
    lines += draw(st.lists(json_line(GOOD_PRODUCT, PRODUCT_FIELDS), min_size=1, max_size=3))
    return to_file(lines, draw)


@FUZZ
@given(content=catalog_jsonl())
@example(
    content=b'{"id": "good", "title": "a"}\n{"id": "2", "title": "b", "price": 1'
    + b"0" * 400
    + b"}\n"
)
@example(
    content=b'{"id": "good", "title": "a"}\n{"id": "2", "title": "b", "x": ' + b"1" * 5000 + b"}\n"
)
@example(content=b'{"id": "good", "title": "a"}\n{"id": "2", "title": "b\\ud800"}\n')
@example(content=b'{"id": "good", "title": "a"}\n{"id": "2", "title": "caf\xe9"}\n')
@example(content=b'{"id": "good", "title": "a"}\n' + b"[" * 100_000 + b"\n")
def test_mutated_jsonl_catalogue(workdir, content):
    path = workdir / "mutated.jsonl"
    path.write_bytes(content)
    products = read_or_error(read_catalog, path, min_line=2)
    if products is not None:
        check_products(products, workdir)


@st.composite
def catalog_csv(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 2)):
        header = list(PRODUCT_FIELDS)
        rows = [["good", "Drill", "", "", "", "59.9", '{"a": 1}']]
    else:
        header = draw(st.lists(st.sampled_from(PRODUCT_FIELDS + ("other",)), max_size=8))
        rows = []
    width = st.integers(0, len(header) + 2)
    cells = st.one_of(
        texts, st.sampled_from(['{"a": [1]}', '{"a": "\\ud800"}', "[1]", "{", *RAW_JSON[3:5]])
    )
    rows += draw(
        st.lists(width.flatmap(lambda n: st.lists(cells, min_size=n, max_size=n)), max_size=3)
    )
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator=draw(st.sampled_from(("\n", "\r\n")))).writerows(
        [header, *rows]
    )
    lines = buffer.getvalue().splitlines(keepends=True)
    if draw(st.booleans()) and len(lines) > 1:  # break one line by hand
        i = draw(st.integers(1, len(lines) - 1))
        at = draw(st.integers(0, len(lines[i])))
        lines[i] = (
            lines[i][:at] + draw(st.sampled_from(('"', ",", "\x00", "x" * 200_000))) + lines[i][at:]
        )
    return "".join(lines).encode("utf-8", "surrogatepass")


@FUZZ
@given(content=catalog_csv())
@example(content=b'id,title\n1,"an unclosed quote\n2,swallows the rest of the file\n')
@example(content=b"id,title\n1," + b"x" * 200_000 + b"\n")
@example(content=b'id,title\n1,"a"b\n')
@example(content=b"id,title\n1,caf\xe9\n")
@example(content=b"id,title,attributes\n1,a," + b"[" * 100_000 + b"\n")
def test_mutated_csv_catalogue(workdir, content):
    path = workdir / "mutated.csv"
    path.write_bytes(content)
    products = read_or_error(read_catalog, path)
    if products is not None:
        check_products(products, workdir)


# Valid values, odd as they may be: they must survive writing and reading unchanged.
plain_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=15)
attribute_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | plain_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(plain_text, inner, max_size=3),
    max_leaves=5,
)
product_records = st.fixed_dictionaries(
    {
        "id": plain_text.filter(str.strip) | st.integers(),
        "title": plain_text.filter(str.strip),
    },
    optional={
        "description": plain_text,
        "brand": plain_text,
        "category": plain_text,
        "price": st.none() | st.floats(0, 1e12) | st.integers(0, 10**15),
        "attributes": st.dictionaries(plain_text, attribute_values, max_size=3),
    },
)


def _unique(products: list[Product]) -> list[Product]:
    return list({p.id: p for p in products}.values())


valid_products = st.lists(
    product_records.map(lambda r: record_to_product(r, "generated", None)), min_size=1, max_size=5
).map(_unique)


@FUZZ
@given(products=valid_products)
def test_catalogue_jsonl_round_trip(workdir, products):
    path = workdir / "round-trip.jsonl"
    write_products(products, path)
    assert read_catalog(path) == products


@settings(FUZZ, max_examples=6)
@given(products=valid_products)
def test_every_accepted_catalogue_builds_and_loads(workdir, products):
    target = workdir / "index"
    with time_limit(30):
        build_index(products, target, encoder=None)
        loaded = load_index(target, verify_hashes=True).products
    assert loaded == sorted(products, key=lambda p: p.id)


# ------------------------------------------------------------------ click log

GOOD_CLICK = {
    "query": "cordless drill",
    "product_id": "p1",
    "position": 3,
    "clicked": 1,
    "purchased": 0,
    "session_id": "s1",
    "user_id": 7,
    "timestamp": "2024-01-01T10:00:00Z",
}


@st.composite
def click_log(draw: st.DrawFn) -> bytes:
    lines = [json.dumps(GOOD_CLICK)]
    lines += draw(st.lists(json_line(GOOD_CLICK, tuple(GOOD_CLICK)), min_size=1, max_size=3))
    return to_file(lines, draw)


@FUZZ
@given(content=click_log())
@example(
    content=b'{"query": "a", "product_id": "1", "position": 1, "clicked": 1}\n'
    b'{"query": "a", "product_id": "1", "position": ' + b"1" * 5000 + b', "clicked": 1}\n'
)
@example(
    content=b'{"query": "a", "product_id": "1", "position": 1, "clicked": 1}\n'
    b'{"query": "a\\ud800", "product_id": "1", "position": 1, "clicked": 1}\n'
)
@example(
    content=b'{"query": "a", "product_id": "1", "position": 1, "clicked": 1}\n'
    + b"[" * 100_000
    + b"\n"
)
@example(
    content=b'{"query": "a", "product_id": "1", "position": 1, "clicked": 1}\n'
    b'{"query": "a", "product_id": "1", "position": 1' + b"0" * 30 + b', "clicked": 1}\n'
)
def test_mutated_click_log(workdir, content):
    path = workdir / "mutated-clicks.jsonl"
    path.write_bytes(content)
    impressions = read_or_error(read_click_log, path, min_line=2)
    if impressions is not None:
        check_impressions(impressions, workdir)


optional_ids = st.none() | plain_text


@st.composite
def impressions(draw: st.DrawFn) -> Impression:
    clicked = draw(st.booleans())
    return Impression(
        query=draw(plain_text.filter(str.strip)),
        product_id=draw(plain_text.filter(str.strip)),
        position=draw(st.integers(1, 2**63 - 1)),
        clicked=clicked,
        purchased=clicked and draw(st.booleans()),
        session_id=draw(optional_ids),
        user_id=draw(optional_ids),
        timestamp=draw(optional_ids),
    )


@FUZZ
@given(log=st.lists(impressions(), min_size=1, max_size=5))
def test_click_log_round_trip(workdir, log):
    path = workdir / "round-trip-clicks.jsonl"
    write_click_log(log, path)
    assert read_click_log(path) == log


# ------------------------------------------------------------------ queries, qrels, runs

GOOD_QUERY = {"id": "q1", "text": "夏季连衣裙"}
QUERY_FIELDS = ("id", "_id", "query_id", "qid", "text", "query")
tsv_fields = st.one_of(texts, st.sampled_from(["q1", "query_id", "qid", "query", "text"]))


@st.composite
def queries_file(draw: st.DrawFn) -> tuple[str, bytes]:
    if draw(st.booleans()):
        lines = [json.dumps(GOOD_QUERY, ensure_ascii=False)]
        lines += draw(st.lists(json_line(GOOD_QUERY, QUERY_FIELDS), min_size=1, max_size=3))
        name = draw(st.sampled_from(("q.jsonl", "q.data")))
    else:
        row = st.lists(tsv_fields, min_size=1, max_size=3).map("\t".join)
        lines = ["q1\t夏季连衣裙", *draw(st.lists(row, min_size=1, max_size=3))]
        name = draw(st.sampled_from(("q.tsv", "q.txt", "q.data")))
    return name, to_file(lines, draw)


@FUZZ
@given(file=queries_file())
@example(file=("q.jsonl", b'{"id": "q1", "text": "a"}\n{"id": {"a": 1}, "text": ["x"]}\n'))
@example(file=("q.jsonl", b'{"id": "q1", "text": "a"}\n{"id": "q2", "text": "\\udc00"}\n'))
@example(file=("q.tsv", b"q1\ta\nq2\tcaf\xe9\n"))
@example(file=("q.tsv", b"q1\ta\nq 2\tb\n"))
def test_mutated_queries(workdir, file):
    name, content = file
    path = workdir / name
    path.write_bytes(content)
    queries = read_or_error(read_queries, path, min_line=2)
    if queries is not None:
        check_queries(queries)


TOKENS = st.one_of(
    texts.filter(lambda t: t.strip() and not any(c.isspace() for c in t)),
    st.sampled_from(["0", "1", "-1", "2.0", "2.5", "NaN", "inf", "1e400", "1" * 5000, "１", "Q0"]),
)


@st.composite
def columns_file(draw: st.DrawFn, good_line: str) -> bytes:
    """``good_line``, then lines of it with columns replaced, or of any number of columns."""
    separators = st.sampled_from((" ", "\t", "  ", " \t"))
    good = good_line.split()
    lines = [good_line]
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            tokens = list(good)
            for i in draw(st.lists(st.integers(0, len(good) - 1), max_size=2)):
                tokens[i] = draw(TOKENS)
        else:
            tokens = draw(st.lists(TOKENS, max_size=7))
        lines.append("".join(t + draw(separators) for t in tokens).rstrip(" \t"))
    return to_file(lines, draw)


@FUZZ
@given(content=columns_file("q1 0 p1 1"))
@example(content=b"q1 0 p1 1\nq2 0 p2 caf\xe9\n")
def test_mutated_qrels(workdir, content):
    path = workdir / "mutated-qrels.txt"
    path.write_bytes(content)
    qrels = read_or_error(read_qrels, path, min_line=2)
    if qrels is not None:
        check_qrels(qrels)


@FUZZ
@given(content=columns_file("q1 Q0 p1 1 0.5 bm25"))
@example(content=b"q1 Q0 p1 1 0.5 bm25\nq1 Q0 p2 \xff 0.4 bm25\n")
def test_mutated_run(workdir, content):
    path = workdir / "mutated.run"
    path.write_bytes(content)
    run = read_or_error(read_run, path, min_line=2)
    if run is not None:
        check_run(run)


# TREC files are whitespace-separated, so written ids have none; a BOM at the very start of a
# file is taken for a byte-order mark, so the first id cannot start with one.
trec_ids = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=8).filter(
    lambda t: not any(c.isspace() for c in t) and not t.startswith("\ufeff")
)


@FUZZ
@given(queries=st.dictionaries(trec_ids, plain_text.filter(str.strip), min_size=1, max_size=5))
@example(queries={"qid": "text"})  # looks like a header line
def test_queries_round_trip(workdir, queries):
    path = write_queries(workdir / "round-trip-queries.tsv", queries)
    assert read_queries(path) == {q: " ".join(t.split()) for q, t in queries.items()}


@FUZZ
@given(
    qrels=st.dictionaries(
        trec_ids, st.dictionaries(trec_ids, st.integers(), min_size=1, max_size=4), min_size=1
    )
)
def test_qrels_round_trip(workdir, qrels):
    assert read_qrels(write_qrels(workdir / "round-trip-qrels.txt", qrels)) == qrels


@FUZZ
@given(
    run=st.dictionaries(
        trec_ids, st.dictionaries(trec_ids, st.floats(allow_nan=False), max_size=4), max_size=4
    ),
    tag=trec_ids,
)
def test_run_round_trip(workdir, run, tag):
    path = write_run(workdir / "round-trip.run", run, tag=tag)
    assert read_run(path) == {q: docs for q, docs in run.items() if docs}


# ------------------------------------------------------------------ examples for the error table


def test_catalogue_nan_price_is_refused(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "1", "title": "a", "price": NaN}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"c\.jsonl:1, field 'price': .*finite number"):
        read_catalog(path)


def test_catalogue_in_latin1_names_the_line_and_byte(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes("id,title\n1,ok\n2,café\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"c\.csv:3: not UTF-8 text \(byte 0xe9"):
        read_catalog(path)


def test_csv_unclosed_quote_is_an_error_not_a_merged_row(tmp_path):
    # Read leniently, the quote would swallow every later row into this product's title.
    path = tmp_path / "c.csv"
    path.write_text('id,title\n1,"Bed, king\n2,Sofa\n3,Lamp\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"c\.csv:2: malformed CSV"):
        read_catalog(path)


def test_wands_tsv_in_latin1_names_the_line(tmp_path):
    (tmp_path / "product.csv").write_bytes("product_id\tproduct_name\n1\tcafé\n".encode("latin-1"))
    (tmp_path / "query.csv").write_text("query_id\tquery\n1\tcafe\n", encoding="utf-8")
    (tmp_path / "label.csv").write_text("query_id\tproduct_id\tlabel\n1\t1\tExact\n")
    with pytest.raises(DataError, match=r"product\.csv:2: not UTF-8 text \(byte 0xe9"):
        load_wands(tmp_path)


def test_catalogue_directory_is_refused(tmp_path):
    (tmp_path / "c.jsonl").mkdir()
    with pytest.raises(DataError, match="is a directory"):
        read_catalog(tmp_path / "c.jsonl")


def test_damaged_index_manifest_is_one_line(tmp_path):
    target = tmp_path / "idx"
    build_index([Product("1", "bed")], target, encoder=None)
    (target / "manifest.json").write_text('{"format": "shopsearch-index", "prod', encoding="utf-8")
    with pytest.raises(IndexLoadError, match="manifest.json is damaged") as info:
        load_index(target)
    assert len(str(info.value).splitlines()) == 1
    result = CliRunner().invoke(cli, ["query", "bed", "--index", str(target)])
    assert result.exit_code == 2 and "is damaged" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("c.jsonl", b'{"id": "1", "title": "ok"}\n{"id": "2", "title": }\n', ":2: malformed JSON"),
        ("c.jsonl", b'{"id": "1", "title": "a", "price": NaN}\n', ":1, field 'price'"),
        ("c.jsonl", b'{"id": "1", "title": "a\\ud800"}\n', ":1, field 'title'"),
        ("c.csv", "id,title\n1,café\n".encode("latin-1"), ":2: not UTF-8 text"),
        ("c.csv", b'id,title\n1,"Bed\n2,Sofa\n', ":2: malformed CSV"),
        ("c.jsonl", b"", ": the catalogue is empty"),
    ],
)
def test_build_index_reports_a_bad_catalogue_in_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    args = ["build-index", "--catalog", str(path), "--index", str(tmp_path / "i"), "--no-dense"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}{message}"), result.stderr


def test_benchmark_of_a_catalogue_id_with_a_space_is_one_line(tmp_path):
    # The catalogue accepts such an id, but a TREC run file cannot hold it.
    catalog = tmp_path / "c.jsonl"
    catalog.write_text('{"id": "p 1", "title": "king bed"}\n{"id": "p2", "title": "sofa"}\n')
    (tmp_path / "q.tsv").write_text("q1\tking bed\n")
    (tmp_path / "qrels.txt").write_text("q1 0 p2 1\n")
    runner = CliRunner()
    index = str(tmp_path / "i")
    build = ["build-index", "--catalog", str(catalog), "--index", index, "--no-dense"]
    assert runner.invoke(cli, build).exit_code == 0
    result = runner.invoke(
        cli,
        ["benchmark", "--index", index, "--queries", str(tmp_path / "q.tsv"), "--qrels"]
        + [str(tmp_path / "qrels.txt"), "--stages", "bm25", "--latency-queries", "0"]
        + ["--out", str(tmp_path / "report"), "--json"],  # --json: no progress bar
    )
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        "error: product id 'p 1' is empty or contains whitespace; TREC files cannot represent it"
    ]


@pytest.fixture(scope="module")
def fixture_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("cli") / "index"
    catalog = Path(__file__).parents[1] / "fixtures" / "catalog.jsonl"
    build_index(read_catalog(catalog), target, encoder=None)
    return target


GOOD_QUERIES, GOOD_QRELS = "q1\tking bed\n", "q1 0 p05 2\n"


@pytest.mark.parametrize(
    "command, files, message",
    [
        (
            ["benchmark", "--queries", "{q.tsv}", "--qrels", "{qrels.txt}", "--json"],
            {"q.tsv": "q1 king bed\n", "qrels.txt": GOOD_QRELS},
            "q.tsv:1: expected 'query_id<TAB>query' (no tab found)",
        ),
        (
            ["benchmark", "--queries", "{q.tsv}", "--qrels", "{qrels.txt}", "--json"],
            {"q.tsv": GOOD_QUERIES, "qrels.txt": "q1 0 p05 high\n"},
            "qrels.txt:1, field 'grade': relevance grade 'high' is not a number",
        ),
    ],
    ids=["queries", "qrels"],
)
def test_benchmark_reports_bad_files_in_one_line(tmp_path, fixture_index, command, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    args = [str(tmp_path / a[1:-1]) if a.startswith("{") else a for a in command]
    result = CliRunner().invoke(cli, [*args, "--index", str(fixture_index)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path}/{message}"), result.stderr
