"""The index manifest: what an index folder holds and how it was made.

Loading compares it with the running code and refuses anything it cannot serve correctly.
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
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"


@dataclass
class Manifest:
    products: int
    catalog_sha256: str
    analyzer: dict[str, Any]
    bm25: dict[str, Any]
    encoder: dict[str, Any] | None
    faiss: dict[str, Any] | None
    fusion: dict[str, Any]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    reranker: dict[str, Any] | None = None
    catalog_source: str = ""
    # Candidates each first-stage retriever hands to fusion, whatever k is asked for.
    candidate_depth: int = DEFAULT_DEPTH
    created: str = ""
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    package_version: str = __version__

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=2)

    def write(self, folder: Path) -> None:
        (folder / MANIFEST_FILE).write_text(self.to_json() + "\n", encoding="utf-8")

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
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise IndexLoadError(f"{path} is damaged ({exc}); rebuild the index") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise IndexLoadError(f"{folder} holds a manifest that is not a shopsearch index's")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise IndexLoadError(
                f"{folder} has index format version {version}, this shopsearch {__version__} "
                f"reads version {FORMAT_VERSION}; rebuild it with `search-cli build-index`"
            )
        known = set(cls.__dataclass_fields__)
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise IndexLoadError(f"{path} is incomplete ({exc}); rebuild the index") from None


def file_record(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def check_files(folder: Path, manifest: Manifest, *, verify_hashes: bool = False) -> None:
    """Every file the manifest lists exists with the recorded size (and hash, if asked)."""
    for name, record in manifest.files.items():
        path = folder / name
        if not path.is_file():
            raise IndexLoadError(f"index {folder} is damaged: {name} is missing; rebuild it")
        if path.stat().st_size != record["bytes"]:
            raise IndexLoadError(
                f"index {folder} is damaged: {name} has "
                f"{path.stat().st_size} bytes, the manifest says "
                f"{record['bytes']}; rebuild it"
            )
        if verify_hashes and file_record(path)["sha256"] != record["sha256"]:
            raise IndexLoadError(
                f"index {folder} is damaged: {name} does not match its checksum; rebuild it"
            )
