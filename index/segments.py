"""Index segments: immutable folders of products, raw BM25 term frequencies and vectors.

An index (format version 2) is a manifest plus segments plus deletion masks, as in Lucene:

    manifest.json                       the current generation (index/manifest.py)
    segments/<name>/products.jsonl      the segment's products, sorted by id; line i = local row i
    segments/<name>/ids.json            their ids, in the same order (what a writer looks up)
    segments/<name>/bm25_terms.json     the segment's vocabulary: local term t = terms[t]
    segments/<name>/bm25_indptr.npy, bm25_doc_indices.npy, bm25_tf.npy
                                        raw term frequencies, CSR term x local row (int64/int32)
    segments/<name>/bm25_doc_lengths.npy  tokens per local row (int32)
    segments/<name>/vectors.npy         float32 (rows, dim), L2-normalised, if the index is dense
    segments/<name>/dense.faiss         the manifest's FAISS factory over the local rows, when
                                        it is not an exact (flat) one
    deletes/<name>.<generation>.npy     bool (rows,): True = deleted in that generation
    reranker/                           optional fine-tuned cross-encoder (+ calibration.json)
    .writer.lock                        the single-writer lock (index/lock.py)

A segment is written once and never changed. An update writes one new segment with the added
and replaced products and a new mask for every older segment that lost rows; a compaction
merges the live rows of all segments into one (reusing their vectors). Opening an index
(``store.load_index``) merges the live rows of every segment into the catalogue a fresh build
of them would have (rows in id order) and applies BM25's statistics over all of them.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from shopsearch.errors import DataError, IndexLoadError
from shopsearch.files import fsync_dir
from shopsearch.index.catalog import record_to_product
from shopsearch.index.generations import (
    DELETES_DIR,
    SEGMENTS_DIR,
    read_npy,
    write_bytes,
    write_npy,
)
from shopsearch.index.manifest import Manifest
from shopsearch.retrieval.bm25 import TermFrequencies
from shopsearch.retrieval.dense import build_faiss_index
from shopsearch.retrieval.types import Product

PRODUCTS_FILE = "products.jsonl"
IDS_FILE = "ids.json"
TERMS_FILE = "bm25_terms.json"
INDPTR_FILE = "bm25_indptr.npy"
DOCS_FILE = "bm25_doc_indices.npy"
TF_FILE = "bm25_tf.npy"
LENGTHS_FILE = "bm25_doc_lengths.npy"
VECTORS_FILE = "vectors.npy"
FAISS_FILE = "dense.faiss"


def product_line(product: Product) -> bytes:
    """A product as its line of ``products.jsonl`` (without the newline)."""
    return json.dumps(product.to_dict(), ensure_ascii=False).encode("utf-8")


def product_digest(product: Product) -> int:
    canonical = json.dumps(product.to_dict(), ensure_ascii=False, sort_keys=True).encode()
    return int.from_bytes(hashlib.sha256(canonical).digest(), "big")


def catalog_digest(products: Iterable[Product]) -> str:
    """A hash of a catalogue's content that ignores order and file format: the sum modulo
    2**256 of the sha256 of each product's canonical JSON. Being a sum, an update adjusts it
    with the products it removes and adds (``adjust_digest``) without reading the rest."""
    return f"{sum(product_digest(p) for p in products) % (1 << 256):064x}"


def adjust_digest(digest: str, removed: Iterable[Product], added: Iterable[Product]) -> str:
    value = int(digest, 16) - sum(map(product_digest, removed)) + sum(map(product_digest, added))
    return f"{value % (1 << 256):064x}"


def segment_file(name: str, file: str) -> str:
    return f"{SEGMENTS_DIR}/{name}/{file}"


def mask_file(name: str, generation: int) -> str:
    return f"{DELETES_DIR}/{name}.{generation:06d}.npy"


@dataclass
class SegmentContent:
    """What a writer puts into a new segment: product lines in id order (``ids``), their term
    frequencies (local rows) and, for a dense index, their vectors ``(rows, dim)``."""

    ids: list[str]
    lines: list[bytes]
    freqs: TermFrequencies
    vectors: np.ndarray | None = None


def write_segment(
    index_dir: Path, generation: int, content: SegmentContent, factory: str | None, exact: bool
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Write ``content`` durably as a new segment of ``index_dir`` (staged, then renamed into
    ``segments/``). Returns its manifest record and its files' records. ``exact``: the factory
    is a flat one, searched from ``vectors.npy`` alone, so no FAISS file is written."""
    if len(content.ids) != len(content.lines) or len(content.ids) != content.freqs.n_docs:
        raise ValueError("a segment's ids, lines and term frequencies must have one row each")
    name = f"{generation:06d}-{secrets.token_hex(3)}"
    segments = index_dir / SEGMENTS_DIR
    segments.mkdir(parents=True, exist_ok=True)
    staging = segments / f".tmp-{name}"
    staging.mkdir()
    records: dict[str, dict[str, Any]] = {}
    try:
        records[PRODUCTS_FILE] = write_bytes(
            staging / PRODUCTS_FILE, b"".join(line + b"\n" for line in content.lines)
        )
        records[IDS_FILE] = write_bytes(
            staging / IDS_FILE, json.dumps(content.ids, ensure_ascii=False).encode("utf-8")
        )
        freqs = content.freqs
        records[TERMS_FILE] = write_bytes(
            staging / TERMS_FILE, json.dumps(freqs.terms, ensure_ascii=False).encode("utf-8")
        )
        for file, array in (
            (INDPTR_FILE, freqs.indptr),
            (DOCS_FILE, freqs.doc_indices),
            (TF_FILE, freqs.tf),
            (LENGTHS_FILE, freqs.doc_lengths),
        ):
            records[file] = write_npy(staging / file, array)
        has_faiss = False
        if content.vectors is not None:
            vectors = np.ascontiguousarray(content.vectors, dtype=np.float32)
            records[VECTORS_FILE] = write_npy(staging / VECTORS_FILE, vectors)
            if not exact and factory is not None:
                faiss_record = _write_faiss(staging / FAISS_FILE, vectors, factory)
                if faiss_record is not None:
                    records[FAISS_FILE] = faiss_record
                    has_faiss = True
        fsync_dir(staging)
        staging.rename(segments / name)
        fsync_dir(segments)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    record = {
        "name": name,
        "generation": generation,
        "rows": len(content.ids),
        "deleted": 0,
        "deletes": None,
        "faiss": has_faiss,
        "first_id": content.ids[0] if content.ids else None,
        "last_id": content.ids[-1] if content.ids else None,
        "vocabulary": len(content.freqs.terms),
    }
    return record, {segment_file(name, f): r for f, r in records.items()}


def _write_faiss(path: Path, vectors: np.ndarray, factory: str) -> dict[str, Any] | None:
    import faiss

    try:
        index = build_faiss_index(vectors, factory)
    except RuntimeError:
        # Too few vectors to train this factory (e.g. an IVF's k-means): the segment is then
        # searched exactly, from its vectors.
        return None
    return write_bytes(path, faiss.serialize_index(index).tobytes())


def write_mask(index_dir: Path, name: str, generation: int, mask: np.ndarray) -> tuple[str, dict]:
    """A new deletion mask for segment ``name`` (never an existing file: the name carries the
    generation). Returns its path and record."""
    folder = index_dir / DELETES_DIR
    folder.mkdir(exist_ok=True)
    path = mask_file(name, generation)
    record = write_npy(index_dir / path, np.asarray(mask, dtype=bool))
    return path, record


class VerifiedReader:
    """Reads the files of one generation, each checked against its manifest record (size and,
    unless ``verify`` is False, sha256) before anything is parsed, so a damaged file is an
    ``IndexLoadError`` naming it, never a wrong answer. A missing file raises
    ``FileNotFoundError`` (a writer may have collected it since the manifest was read)."""

    def __init__(self, index_dir: Path, manifest: Manifest, *, verify: bool = True) -> None:
        self.index_dir = index_dir
        self.manifest = manifest
        self.verify = verify

    def damaged(self, path: str, problem: str) -> IndexLoadError:
        return IndexLoadError(
            f"index {self.index_dir} is damaged: {path} {problem}; rebuild it "
            f"(`search-cli check --index {self.index_dir}` lists every problem)"
        )

    def read(self, path: str) -> bytes:
        record = self.manifest.files.get(path)
        if record is None:
            raise IndexLoadError(
                f"index {self.index_dir} is damaged: its manifest lists no {path}; rebuild it"
            )
        data = (self.index_dir / path).read_bytes()
        if len(data) != record["bytes"]:
            raise self.damaged(path, f"has {len(data)} bytes, the manifest says {record['bytes']}")
        if self.verify and hashlib.sha256(data).hexdigest() != record["sha256"]:
            raise self.damaged(path, "does not match its checksum")
        return data

    def json(self, path: str) -> Any:
        try:
            return json.loads(self.read(path).decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise self.damaged(path, f"is not valid JSON ({exc})") from None

    def array(self, path: str, dtype: Any, shape: tuple[int | None, ...]) -> np.ndarray:
        """An ``.npy`` array of the given dtype kind and shape (None: any length)."""
        try:
            array = read_npy(self.read(path))
        except (ValueError, OSError, EOFError) as exc:
            raise self.damaged(path, f"is not a valid .npy file ({exc})") from None
        if array.dtype != np.dtype(dtype) or array.ndim != len(shape):
            raise self.damaged(path, f"holds {array.dtype} {array.shape}, not {np.dtype(dtype)}")
        for got, want in zip(array.shape, shape):
            if want is not None and got != want:
                raise self.damaged(path, f"has shape {array.shape}, expected {shape}")
        return array


class SegmentReader:
    """The parts of one segment of one generation, each read and checked on demand."""

    def __init__(self, reader: VerifiedReader, record: dict[str, Any]) -> None:
        self.reader = reader
        self.record = record
        self.name = str(record["name"])
        self.rows = int(record["rows"])
        self._lines: list[bytes] | None = None

    def path(self, file: str) -> str:
        return segment_file(self.name, file)

    def ids(self) -> list[str]:
        ids = self.reader.json(self.path(IDS_FILE))
        if not isinstance(ids, list) or len(ids) != self.rows:
            raise self.reader.damaged(self.path(IDS_FILE), f"does not list {self.rows} ids")
        if any(not isinstance(i, str) for i in ids) or any(a >= b for a, b in zip(ids, ids[1:])):
            raise self.reader.damaged(self.path(IDS_FILE), "is not a sorted list of unique ids")
        return ids

    def deleted(self) -> np.ndarray:
        """The segment's deletion mask in this generation, shape ``(rows,)`` bool."""
        path = self.record.get("deletes")
        if path is None:
            if self.record.get("deleted", 0):
                raise self.reader.damaged(f"segment {self.name}", "has deletions but no mask")
            return np.zeros(self.rows, dtype=bool)
        mask = self.reader.array(path, bool, (self.rows,))
        if int(mask.sum()) != self.record.get("deleted"):
            raise self.reader.damaged(
                path, f"deletes {int(mask.sum())} rows, the manifest says {self.record['deleted']}"
            )
        return mask

    def lines(self) -> list[bytes]:
        """The raw JSON lines of ``products.jsonl``, one per local row (read once)."""
        if self._lines is not None:
            return self._lines
        path = self.path(PRODUCTS_FILE)
        data = self.reader.read(path)
        if data and not data.endswith(b"\n"):
            raise self.reader.damaged(path, "does not end with a newline")
        lines = data.split(b"\n")[:-1]
        if len(lines) != self.rows:
            raise self.reader.damaged(path, f"holds {len(lines)} lines for {self.rows} rows")
        self._lines = lines
        return lines

    def products(self, ids: Sequence[str], rows: Iterable[int] | None = None) -> list[Product]:
        """The products of ``rows`` (default: all), checked against the segment's ids."""
        path = self.path(PRODUCTS_FILE)
        lines = self.lines()
        out = []
        for row in range(self.rows) if rows is None else rows:
            try:
                product = record_to_product(json.loads(lines[row].decode("utf-8")), path, row + 1)
            except (ValueError, DataError) as exc:
                raise self.reader.damaged(
                    path, f"line {row + 1} is not a product ({exc})"
                ) from None
            if product.id != ids[row]:
                raise self.reader.damaged(path, f"line {row + 1} is not product {ids[row]!r}")
            out.append(product)
        return out

    def frequencies(self) -> TermFrequencies:
        terms = self.reader.json(self.path(TERMS_FILE))
        if not isinstance(terms, list) or any(not isinstance(t, str) for t in terms):
            raise self.reader.damaged(self.path(TERMS_FILE), "is not a list of terms")
        indptr = self.reader.array(self.path(INDPTR_FILE), np.int64, (len(terms) + 1,))
        docs = self.reader.array(self.path(DOCS_FILE), np.int32, (None,))
        tf = self.reader.array(self.path(TF_FILE), np.int32, (len(docs),))
        lengths = self.reader.array(self.path(LENGTHS_FILE), np.int32, (self.rows,))
        if (
            indptr[0] != 0
            or indptr[-1] != len(docs)
            or (np.diff(indptr) < 1).any()
            or (len(docs) and (docs.min() < 0 or docs.max() >= self.rows))
            or (tf < 1).any()
        ):
            raise self.reader.damaged(f"segment {self.name}", "has inconsistent BM25 arrays")
        return TermFrequencies(terms, indptr, docs, tf, lengths)

    def vectors(self, dim: int) -> np.ndarray:
        return self.reader.array(self.path(VECTORS_FILE), np.float32, (self.rows, dim))

    def faiss_index(self) -> Any:
        """The segment's own FAISS index, over its local rows."""
        import faiss

        path = self.path(FAISS_FILE)
        data = self.reader.read(path)
        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError as exc:
            raise self.reader.damaged(path, f"is not a FAISS index ({exc})") from None
        if index.ntotal != self.rows:
            raise self.reader.damaged(path, f"holds {index.ntotal} vectors for {self.rows} rows")
        return index
