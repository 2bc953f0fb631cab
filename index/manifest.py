"""The index manifest: what an index folder holds and how it was made.

Loading compares it with the running code and refuses anything it cannot serve correctly.
The manifest is the one file a writer replaces: publishing a generation of the index is the
atomic rename of a new manifest onto ``manifest.json`` (index/generations.py), so a reader that
has read it knows every file of one consistent generation (index/segments.py lists them).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shopsearch import __version__
from shopsearch.errors import IndexLoadError
from shopsearch.retrieval.hybrid import DEFAULT_DEPTH

FORMAT_NAME = "shopsearch-index"
# 1: one catalogue baked into BM25 contributions; 2: segments of raw term frequencies plus
# deletion masks, published as generations.
FORMAT_VERSION = 2
MANIFEST_FILE = "manifest.json"
# The top-level manifest of a sharded index (shopsearch.distributed.manifest).
SHARDED_FORMAT_NAME = "shopsearch-sharded-index"


@dataclass
class Manifest:
    """``products``: live products; ``catalog_sha256``: ``segments.catalog_digest`` of them.
    ``segments``: one record per segment (``name``, ``generation`` it was written in,
    ``rows``, ``deleted`` rows, ``deletes``: the path of its deletion mask or None, ``faiss``:
    whether it has its own FAISS file, ``first_id``/``last_id``, ``vocabulary``); ``files``:
    ``{path relative to the index: {"bytes", "sha256"}}`` for every file of every segment and
    mask. ``checksum`` is the sha256 of the manifest's own JSON with an empty checksum."""

    products: int
    catalog_sha256: str
    analyzer: dict[str, Any]
    bm25: dict[str, Any]
    encoder: dict[str, Any] | None
    faiss: dict[str, Any] | None
    fusion: dict[str, Any]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    reranker: dict[str, Any] | None = None
    # The learning-to-rank model (``ltr-<id>/``: path, features, importances, first stage).
    ltr: dict[str, Any] | None = None
    catalog_source: str = ""
    # Candidates each first-stage retriever hands to fusion, whatever k is asked for.
    candidate_depth: int = DEFAULT_DEPTH
    created: str = ""
    generation: int = 1
    segments: list[dict[str, Any]] = field(default_factory=list)
    updated: str = ""
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    package_version: str = __version__
    checksum: str = ""

    def _body(self) -> dict[str, Any]:
        # Fields added since a manifest format was fixed are left out while unset, so that a
        # manifest written before they existed keeps its checksum.
        return {k: v for k, v in asdict(self).items() if not (k == "ltr" and v is None)}

    def _digest(self) -> str:
        body = {**self._body(), "checksum": ""}
        return hashlib.sha256(json.dumps(body, ensure_ascii=False, indent=2).encode()).hexdigest()

    def to_json(self) -> str:
        """The manifest as written, with its checksum filled in."""
        return json.dumps(
            {**self._body(), "checksum": self._digest()}, ensure_ascii=False, indent=2
        )

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        path = folder / MANIFEST_FILE
        if not folder.exists():
            raise IndexLoadError(
                f"index folder {folder} does not exist; build one with "
                f"`search-cli build-index --index {folder}`"
            )
        if not path.is_file():
            raise IndexLoadError(
                f"{folder} is not a shopsearch index (no {MANIFEST_FILE}); "
                f"build one with `search-cli build-index --index {folder}`"
            )
        return cls.from_json(path.read_bytes(), folder)

    @classmethod
    def from_json(cls, raw: bytes, folder: Path) -> Manifest:
        path = folder / MANIFEST_FILE
        try:
            data = json.loads(raw.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise IndexLoadError(f"{path} is damaged ({exc}); rebuild the index") from None
        if isinstance(data, dict) and data.get("format") == SHARDED_FORMAT_NAME:
            raise IndexLoadError(
                f"{folder} is a sharded index (built with `build-index --ray`): `query`, "
                f"`serve` and `benchmark` open it; this command works on an unsharded index "
                f"(build one without --ray)"
            )
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise IndexLoadError(f"{folder} holds a manifest that is not a shopsearch index's")
        version = data.get("format_version")
        if version == 1:
            raise IndexLoadError(
                f"{folder} is an index of format version 1 (from an earlier shopsearch), whose "
                f"BM25 scores are baked for one fixed catalogue; this shopsearch {__version__} "
                f"reads version {FORMAT_VERSION} (segments that can be updated in place). "
                f"Rebuild it once with `search-cli build-index --index {folder}` (with the "
                f"--catalog and --model it was built with)"
            )
        if version != FORMAT_VERSION:
            raise IndexLoadError(
                f"{folder} has index format version {version}, this shopsearch {__version__} "
                f"reads version {FORMAT_VERSION}; rebuild it with `search-cli build-index`"
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
        if not isinstance(manifest.generation, int) or not isinstance(manifest.segments, list):
            raise IndexLoadError(f"{path} is damaged (no generation or segments); rebuild it")
        return manifest


def read_raw_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest's JSON as a dict whatever its version, or None when it is missing or not
    JSON: what a rebuild needs from an index it replaces (its generation, its files)."""
    try:
        data = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def file_record(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def check_files(folder: Path, manifest: Manifest, *, verify_hashes: bool = False) -> None:
    """Every file the manifest lists exists with the recorded size (and hash, if asked).
    A missing file raises ``FileNotFoundError`` (it may have been collected by a writer since
    the manifest was read; the caller decides), a wrong one ``IndexLoadError``."""
    for name, record in manifest.files.items():
        path = folder / name
        size = path.stat().st_size
        if size != record["bytes"]:
            raise IndexLoadError(
                f"index {folder} is damaged: {name} has {size} bytes, the manifest says "
                f"{record['bytes']}; rebuild it"
            )
        if verify_hashes and file_record(path)["sha256"] != record["sha256"]:
            raise IndexLoadError(
                f"index {folder} is damaged: {name} does not match its checksum; rebuild it"
            )
