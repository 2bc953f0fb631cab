"""The top-level manifest of a sharded index, and the global BM25 statistics beside it.

A sharded index is a folder holding one ordinary index (format 2, index/segments.py) per
shard and, at its top, what makes the shards one catalogue::

    manifest.json                       this manifest (format "shopsearch-sharded-index")
    shards/<generation>-<partition>-<token>/   one complete index per shard (its own manifest,
                                        segments, checksums; `search-cli check` works on it)
    stats-<generation>-<token>/bm25_terms.json, bm25_doc_freq.npy
                                        the whole catalogue's BM25 statistics: every term and
                                        its document frequency (N and total length are here)
    reranker/                           optional fine-tuned cross-encoder, as in an index

Products go to partition ``sha256(id) mod partitions`` (``shard_of``); an empty partition has
no shard. The manifest records each shard's path, product count and the sha256 of its
``manifest.json``, so a shard swapped for another build's is refused at load, and the files of
the statistics with their sizes and sha256. It is published like an index's generation
(index/generations.py): new shard folders and statistics first, then the manifest renamed into
place, then what neither it nor the previous manifest references is removed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shopsearch import __version__
from shopsearch.errors import IndexLoadError
from shopsearch.index.generations import read_npy, write_bytes, write_npy
from shopsearch.index.manifest import MANIFEST_FILE, SHARDED_FORMAT_NAME
from shopsearch.retrieval.bm25 import CollectionStats
from shopsearch.retrieval.hybrid import DEFAULT_DEPTH

SHARDED_FORMAT_VERSION = 1
PARTITION = "sha256(id) mod partitions"
TERMS_FILE = "bm25_terms.json"
DOC_FREQ_FILE = "bm25_doc_freq.npy"


def shard_of(product_id: str, partitions: int) -> int:
    """The partition of a product: the first 8 bytes of the sha256 of its id, modulo
    ``partitions``. Stable across runs and machines (unlike Python's ``hash``)."""
    digest = hashlib.sha256(product_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % partitions


def is_sharded_index(folder: str | Path) -> bool:
    """Whether ``folder`` holds a sharded index (its manifest says so)."""
    try:
        data = json.loads((Path(folder) / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == SHARDED_FORMAT_NAME


@dataclass
class ShardedManifest:
    """``shards``: one record per shard, ``{"path", "partition", "products",
    "manifest_sha256"}``; ``partitions``: the modulus of ``shard_of``; ``bm25_stats``:
    ``{"n_docs", "total_length", "terms", "doc_freq"}`` (the last two: paths of the files);
    ``files``: ``{path: {"bytes", "sha256"}}`` of those files. The settings (analyser, BM25
    parameters, encoder, FAISS factory, fusion, candidate depth) are every shard's."""

    products: int
    catalog_sha256: str
    partitions: int
    shards: list[dict[str, Any]]
    bm25_stats: dict[str, Any]
    analyzer: dict[str, Any]
    bm25: dict[str, Any]
    encoder: dict[str, Any] | None
    faiss: dict[str, Any] | None
    fusion: dict[str, Any]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    reranker: dict[str, Any] | None = None
    partition: str = PARTITION
    catalog_source: str = ""
    candidate_depth: int = DEFAULT_DEPTH
    created: str = ""
    generation: int = 1
    updated: str = ""
    format: str = SHARDED_FORMAT_NAME
    format_version: int = SHARDED_FORMAT_VERSION
    package_version: str = __version__
    checksum: str = ""

    def _digest(self) -> str:
        body = {**asdict(self), "checksum": ""}
        return hashlib.sha256(json.dumps(body, ensure_ascii=False, indent=2).encode()).hexdigest()

    def to_json(self) -> str:
        return json.dumps(
            {**asdict(self), "checksum": self._digest()}, ensure_ascii=False, indent=2
        )

    @classmethod
    def read(cls, folder: Path) -> ShardedManifest:
        path = Path(folder) / MANIFEST_FILE
        if not Path(folder).exists():
            raise IndexLoadError(
                f"index folder {folder} does not exist; build one with "
                f"`search-cli build-index --ray --index {folder}`"
            )
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            raise IndexLoadError(
                f"{folder} is not a shopsearch index (no {MANIFEST_FILE})"
            ) from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise IndexLoadError(f"{path} is damaged ({exc}); rebuild the index") from None
        if not isinstance(data, dict) or data.get("format") != SHARDED_FORMAT_NAME:
            raise IndexLoadError(f"{folder} is not a sharded index")
        if data.get("format_version") != SHARDED_FORMAT_VERSION:
            raise IndexLoadError(
                f"{folder} is a sharded index of format version {data.get('format_version')}, "
                f"this shopsearch {__version__} reads version {SHARDED_FORMAT_VERSION}; "
                f"rebuild it with `search-cli build-index --ray`"
            )
        known = set(cls.__dataclass_fields__)
        try:
            manifest = cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise IndexLoadError(f"{path} is incomplete ({exc}); rebuild the index") from None
        if manifest.checksum != manifest._digest():
            raise IndexLoadError(
                f"{path} is damaged (it does not match its checksum); rebuild the index"
            )
        return manifest


def manifest_sha256(index_dir: Path) -> str:
    """The sha256 of an index folder's ``manifest.json``: what pins a shard's generation."""
    return hashlib.sha256((Path(index_dir) / MANIFEST_FILE).read_bytes()).hexdigest()


def write_stats(folder: Path, stats: CollectionStats) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write ``stats`` durably into ``folder`` (relative paths are taken from its parent, the
    index). Returns the manifest's ``bm25_stats`` record and the files' records."""
    folder.mkdir(parents=True)
    terms = sorted(stats.doc_freq)
    doc_freq = np.array([stats.doc_freq[t] for t in terms], dtype=np.int64)
    rel = folder.name
    files = {
        f"{rel}/{TERMS_FILE}": write_bytes(
            folder / TERMS_FILE, json.dumps(terms, ensure_ascii=False).encode("utf-8")
        ),
        f"{rel}/{DOC_FREQ_FILE}": write_npy(folder / DOC_FREQ_FILE, doc_freq),
    }
    record = {
        "n_docs": stats.n_docs,
        "total_length": stats.total_length,
        "terms": f"{rel}/{TERMS_FILE}",
        "doc_freq": f"{rel}/{DOC_FREQ_FILE}",
    }
    return record, files


def read_stats(index_dir: Path, manifest: ShardedManifest) -> CollectionStats:
    """The global BM25 statistics, each file checked against its size and sha256."""
    record = manifest.bm25_stats

    def read(key: str) -> bytes:
        path = str(record[key])
        expected = manifest.files.get(path)
        damaged = f"index {index_dir} is damaged: {path}"
        if expected is None:
            raise IndexLoadError(f"{damaged} is not in its manifest; rebuild it")
        try:
            data = (index_dir / path).read_bytes()
        except FileNotFoundError:
            raise IndexLoadError(f"{damaged} is missing; rebuild it") from None
        if len(data) != expected["bytes"] or hashlib.sha256(data).hexdigest() != expected["sha256"]:
            raise IndexLoadError(f"{damaged} does not match its checksum; rebuild it")
        return data

    try:
        terms = json.loads(read("terms").decode("utf-8"))
        doc_freq = read_npy(read("doc_freq"))
    except (ValueError, OSError) as exc:
        raise IndexLoadError(
            f"index {index_dir}: its BM25 statistics are unreadable ({exc}); rebuild it"
        ) from None
    if not isinstance(terms, list) or len(terms) != len(doc_freq) or doc_freq.dtype != np.int64:
        raise IndexLoadError(f"index {index_dir} is damaged: its BM25 statistics disagree")
    return CollectionStats(
        int(record["n_docs"]),
        int(record["total_length"]),
        dict(zip(terms, doc_freq.tolist())),
    )
