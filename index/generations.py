"""Publishing a generation of an index durably and atomically, and collecting old files.

An index changes only by publishing a new generation: every new file is written under a name
no published manifest uses, flushed and fsynced, its folder fsynced; then the new manifest is
written to ``.manifest.json.tmp``, fsynced, renamed onto ``manifest.json`` (the atomic step:
before it readers see the old generation, after it the new one) and the index folder is
fsynced, so the rename is on disk before the writer reports success. A writer killed at any
moment leaves either generation complete; what it had written but not published is garbage,
removed by the next publish.

Files are never modified once published (a deletion mask is a new file per generation), and
a publish removes only what neither the new nor the previous generation references, so a
reader that read the previous manifest a moment ago still finds every file it names (and a
slower one retries with the new manifest, see ``store.load_index``).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence, TypeVar

import numpy as np

from shopsearch.files import fsync_dir
from shopsearch.index.lock import LOCK_FILE
from shopsearch.index.manifest import FORMAT_VERSION, MANIFEST_FILE, SHARDED_FORMAT_NAME

logger = logging.getLogger(__name__)

SEGMENTS_DIR = "segments"
DELETES_DIR = "deletes"
RERANKER_DIR = "reranker"
# A sharded index (shopsearch.distributed) keeps one ordinary index per shard under shards/.
SHARDS_DIR = "shards"
_MANIFEST_TMP = f".{MANIFEST_FILE}.tmp"


class DurableFile:
    """A file written once: hashes what is written and fsyncs it on ``close``, which returns
    its manifest record ``{"bytes", "sha256"}``."""

    def __init__(self, path: Path) -> None:
        self._handle = path.open("wb")
        self._sha = hashlib.sha256()
        self._bytes = 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._handle.write(view)
        self._sha.update(view)
        self._bytes += len(view)
        return len(view)

    def close(self) -> dict[str, Any]:
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        return {"bytes": self._bytes, "sha256": self._sha.hexdigest()}


def write_bytes(path: Path, data: bytes) -> dict[str, Any]:
    out = DurableFile(path)
    try:
        out.write(data)
    finally:
        record = out.close()
    return record


def write_npy(path: Path, array: np.ndarray) -> dict[str, Any]:
    out = DurableFile(path)
    try:
        np.save(out, np.ascontiguousarray(array), allow_pickle=False)
    finally:
        record = out.close()
    return record


def read_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


class Publishable(Protocol):
    """What ``publish`` writes: an index manifest (``Manifest``, or a sharded index's)."""

    generation: int

    def to_json(self) -> str: ...


P = TypeVar("P", bound=Publishable)


def references(manifest: Publishable | Mapping[str, Any] | None) -> set[str]:
    """Paths (relative to the index) that a manifest needs: its files, its segment folders (a
    sharded index's: its shard folders) and its reranker folder. A manifest of another format
    version needs only its reranker."""
    if manifest is None:
        return set()
    data: Mapping[str, Any] = manifest if isinstance(manifest, Mapping) else vars(manifest)
    reranker = data.get("reranker")
    refs = {str(reranker.get("path") or RERANKER_DIR)} if isinstance(reranker, dict) else set()
    ltr = data.get("ltr")
    if isinstance(ltr, dict) and ltr.get("path"):
        refs.add(str(ltr["path"]))
    if data.get("format") == SHARDED_FORMAT_NAME:
        refs |= set(data.get("files") or {})
        return refs | {str(s["path"]) for s in data.get("shards") or []}
    if data.get("format_version") != FORMAT_VERSION:
        return refs
    refs |= set(data.get("files") or {})
    refs |= {f"{SEGMENTS_DIR}/{s['name']}" for s in data.get("segments") or []}
    return refs


def collect_garbage(
    index_dir: Path, keep: Sequence[Publishable | Mapping[str, Any] | None]
) -> list[str]:
    """Remove what none of the ``keep`` manifests references: older generations' segments and
    masks, and whatever an interrupted writer left. Only a writer holding the lock calls it.
    Returns the paths removed."""
    referenced: set[str] = set()
    for manifest in keep:
        referenced |= references(manifest)
    folders = (SEGMENTS_DIR, DELETES_DIR, SHARDS_DIR)
    top = {MANIFEST_FILE, LOCK_FILE, *folders} | {r.split("/")[0] for r in referenced}
    doomed: list[Path] = []
    for entry in index_dir.iterdir():
        if entry.name in folders and entry.is_dir():
            doomed += [c for c in entry.iterdir() if f"{entry.name}/{c.name}" not in referenced]
        elif entry.name not in top:
            doomed.append(entry)
    for path in doomed:
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError as exc:  # left for the next publish to retry
            logger.warning("could not remove %s: %s", path, exc)
    return [str(p.relative_to(index_dir)) for p in doomed]


def publish(index_dir: Path, manifest: P, previous: Publishable | Mapping[str, Any] | None) -> P:
    """Make ``manifest`` the index's current generation (its files must already be durable),
    then remove what neither it nor ``previous`` references. The caller holds the lock."""
    # The new files' directory entries are durable before the manifest that names them.
    for folder in (
        index_dir / SEGMENTS_DIR,
        index_dir / DELETES_DIR,
        index_dir / SHARDS_DIR,
        index_dir,
    ):
        if folder.is_dir():
            fsync_dir(folder)
    tmp = index_dir / _MANIFEST_TMP
    write_bytes(tmp, (manifest.to_json() + "\n").encode("utf-8"))
    os.replace(tmp, index_dir / MANIFEST_FILE)
    fsync_dir(index_dir)
    removed = collect_garbage(index_dir, [previous, manifest])
    if removed:
        logger.info("generation %d published; removed %s", manifest.generation, removed)
    return manifest
