"""The engine a server answers with, and swapping in a new one without dropping a request.

A request takes :attr:`EngineHolder.current` once and uses that object to the end, so a reload
(a new reranker installed by ``train-reranker``, a fusion setting tuned, the index rebuilt) only
changes which engine *later* requests take: the swap is one reference assignment, the loading
happens before it, beside the serving engine, and a load that fails leaves the old engine
serving. Each worker process watches the index manifest, so a reload asked of one worker (or
a new index written by another process) reaches every worker within the watch interval.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shopsearch.errors import SearchError

logger = logging.getLogger(__name__)

# Without propensities from the reranker's training, ECE assumes the position-based model's
# usual 1/p examination curve (eta = 1), over ranks 1..100.
DEFAULT_PROPENSITIES = 1.0 / np.arange(1, 101, dtype=np.float64)


def _digest(*paths: Path) -> str | None:
    sha = hashlib.sha256()
    found = False
    for path in paths:
        if path.is_file():
            sha.update(path.read_bytes())
            found = True
    return sha.hexdigest()[:12] if found else None


def manifest_signature(index_dir: Path) -> tuple[int, int, int] | None:
    """What changes whenever anything publishes to the index: the manifest is rewritten
    (or its folder replaced) by every command that changes what is served."""
    try:
        stat = (index_dir / "manifest.json").stat()
    except OSError:
        return None
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


@dataclass(frozen=True)
class ServedEngine:
    """One loaded engine and the versions it answers with."""

    engine: Any
    versions: dict[str, str | None]
    propensities: np.ndarray
    signature: tuple[int, int, int] | None
    loaded_at: float = field(default_factory=time.time)

    @property
    def version(self) -> str:
        """One string naming what served a request: index digest, then reranker digest."""
        reranker = self.versions.get("reranker")
        return f"{self.versions['index']}" + (f"+{reranker}" if reranker else "")


def describe_engine(engine: Any, signature: tuple[int, int, int] | None) -> ServedEngine:
    import json

    index_dir = Path(engine.index.path)
    manifest = engine.index.manifest
    reranker_dir = engine.index.reranker_path or index_dir / "reranker"
    has_reranker = engine.reranker is not None
    versions: dict[str, str | None] = {
        # The manifest this engine was loaded from, not the file now on disk: a writer may
        # have published a newer one since, and the version must name what serves.
        "index": (manifest.checksum or manifest._digest())[:12],
        "encoder": (manifest.encoder or {}).get("name") if engine.encoder is not None else None,
        "reranker": _digest(reranker_dir / "training.json", reranker_dir / "calibration.json")
        if has_reranker
        else None,
        "stage": engine.final_stage,
    }
    propensities = DEFAULT_PROPENSITIES
    training = reranker_dir / "training.json"
    if has_reranker and training.is_file():
        recorded = json.loads(training.read_text(encoding="utf-8")).get("propensities")
        if recorded and all(isinstance(x, (int, float)) and x > 0 for x in recorded):
            propensities = np.asarray(recorded, dtype=np.float64)
    return ServedEngine(engine, versions, propensities, signature)


def open_default(index_dir: Path, cache_size: int | None = None) -> Any:
    from shopsearch.engine import SearchEngine

    if cache_size is None:
        return SearchEngine.open(index_dir)
    return SearchEngine.open(index_dir, cache_size=cache_size)


class EngineHolder:
    """The current engine of one worker, its reloads and its manifest watcher."""

    def __init__(
        self, index_dir: str | Path, open_engine: Callable[[Path], Any] = open_default
    ) -> None:
        self.index_dir = Path(index_dir)
        self.open_engine = open_engine
        self.current: ServedEngine | None = None
        self.last_error: str | None = None
        self.reloads = 0
        self.failed_reloads = 0
        self._failed_signature: tuple[int, int, int] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def reload(self) -> ServedEngine:
        """Load the index as it is now and swap it in; on failure keep serving the old one
        and raise ``SearchError``. Reloads run one at a time."""
        with self._lock:
            signature = manifest_signature(self.index_dir)
            started = time.perf_counter()
            try:
                served = describe_engine(self.open_engine(self.index_dir), signature)
            except SearchError as exc:
                self.failed_reloads += 1
                self.last_error = str(exc)
                self._failed_signature = signature
                logger.error("could not load %s: %s", self.index_dir, exc)
                raise
            self.current = served
            self.reloads += 1
            self.last_error = None
            logger.warning(
                "serving %s (version %s), loaded in %.1f s",
                self.index_dir,
                served.version,
                time.perf_counter() - started,
            )
            return served

    def changed(self) -> bool:
        signature = manifest_signature(self.index_dir)
        current = self.current
        if signature is None or signature == self._failed_signature:
            return False  # nothing published yet, or what is there already failed to load
        return current is None or signature != current.signature

    def start_watching(self, interval_s: float) -> None:
        if interval_s <= 0 or self._watcher is not None:
            return

        def watch() -> None:
            while not self._stop.wait(interval_s):
                if self.changed():
                    try:
                        self.reload()
                    except SearchError:
                        pass  # logged; the old engine keeps serving, retried next change
                    except Exception:  # a bug must not kill the watcher thread silently
                        logger.exception("reload of %s failed", self.index_dir)

        self._watcher = threading.Thread(target=watch, name="index-watcher", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None
