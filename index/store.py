"""Building an index folder, loading one safely, and changing its settings.

The layout on disk (segments, deletion masks, generations) is described in index/segments.py.
A build writes one segment holding the whole catalogue: into a temporary sibling folder that is
renamed into place when the index is new, or, over an existing index, as a new generation of
it (under the writer lock), so that readers of the old generation keep working and a crash at
any moment leaves either the old or the new index (index/generations.py). Loading reads one
generation and materialises the catalogue exactly as a fresh build of its live products would:
rows in id order, BM25 statistics over all of them, one exact FAISS index or one per segment.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from shopsearch.errors import IndexLoadError, SearchError
from shopsearch.files import fsync_dir
from shopsearch.index.catalog import record_to_product
from shopsearch.index.generations import (
    DELETES_DIR,
    RERANKER_DIR,
    SEGMENTS_DIR,
    publish,
)
from shopsearch.index.lock import writer_lock
from shopsearch.index.manifest import (
    MANIFEST_FILE,
    Manifest,
    check_files,
    read_raw_manifest,
)
from shopsearch.index.segments import (
    SegmentContent,
    SegmentReader,
    VerifiedReader,
    catalog_digest,
    product_line,
    write_segment,
)
from shopsearch.retrieval.analysis import Analyzer
from shopsearch.retrieval.base import Encoder
from shopsearch.retrieval.bm25 import BM25Index, BM25Params, CollectionStats, TermFrequencies
from shopsearch.retrieval.dense import (
    EXACT_FACTORY,
    SegmentedDenseIndex,
    build_faiss_index,
    choose_factory,
    is_exact_factory,
)
from shopsearch.retrieval.filters import FilterIndex
from shopsearch.retrieval.fusion import FusionConfig
from shopsearch.retrieval.hybrid import DEFAULT_DEPTH
from shopsearch.retrieval.types import Product

logger = logging.getLogger(__name__)

# A reader retries with a fresh manifest when a file vanished under it (collected by a writer
# two generations on); each retry means another generation was published meanwhile.
LOAD_ATTEMPTS = 5


@dataclass
class BuildSummary:
    path: Path
    products: int
    seconds: float
    bytes_on_disk: int
    encode_seconds: float = 0.0
    texts_per_second: float = 0.0
    factory: str | None = None
    generation: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": str(self.path),
            "products": self.products,
            "seconds": round(self.seconds, 2),
            "bytes_on_disk": self.bytes_on_disk,
            "encode_seconds": round(self.encode_seconds, 2),
            "texts_per_second": round(self.texts_per_second, 1),
            "faiss_factory": self.factory,
            "generation": self.generation,
        }


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def index_size(path: Path, manifest: Manifest) -> int:
    """Bytes of what the current generation uses: its files and its reranker."""
    reranker = path / reranker_folder(manifest)
    extra = folder_size(reranker) if manifest.reranker and reranker.is_dir() else 0
    ltr = path / str((manifest.ltr or {}).get("path") or LTR_DIR)
    extra += folder_size(ltr) if manifest.ltr and ltr.is_dir() else 0
    return sum(int(r["bytes"]) for r in manifest.files.values()) + extra


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def encoder_record(encoder: Encoder) -> dict[str, Any]:
    describe = getattr(encoder, "describe", None)
    return describe() if describe else {"name": encoder.name, "dim": encoder.dim}


def encode(
    encoder: Encoder,
    texts: Sequence[str],
    dim: int,
    batch_size: int = 64,
    show_progress: bool = False,
) -> np.ndarray:
    """Document vectors, shape ``(len(texts), dim)`` float32, checked against ``dim``."""
    vectors = np.asarray(
        encoder.encode_documents(list(texts), batch_size=batch_size, show_progress=show_progress),
        dtype=np.float32,
    )
    if vectors.shape != (len(texts), dim):
        raise SearchError(
            f"encoder {encoder.name} returned vectors of shape {vectors.shape} for "
            f"{len(texts)} texts; the index holds {dim}-d vectors"
        )
    return vectors


def build_index(
    products: list[Product],
    target: Path,
    *,
    encoder: Encoder | None,
    analyzer: Analyzer | None = None,
    bm25_params: BM25Params = BM25Params(),
    factory: str | None = None,
    fusion: FusionConfig = FusionConfig(),
    batch_size: int = 64,
    show_progress: bool = False,
    source: str = "",
    copy_reranker_from: Path | None = None,
    reranker_record: Mapping[str, Any] | None = None,
    candidate_depth: int = DEFAULT_DEPTH,
    on_stage: Callable[[str], None] | None = None,
) -> BuildSummary:
    """Build a complete index of ``products`` into ``target`` (replacing an index there).

    A new index is written into a temporary sibling folder and renamed into place; over an
    existing index (of any format version) the build is published as its next generation,
    holding the writer lock, so the old index serves until the new one is complete and
    survives a failed or killed build. ``copy_reranker_from`` stores a fine-tuned reranker
    folder in the index; a rebuild passes the old manifest's ``reranker_record`` with it, so
    that what was tuned for that reranker (its blend) survives.
    """
    if not products:
        raise SearchError("cannot build an index of an empty catalogue")
    target = Path(target).resolve()
    if target.exists() and not target.is_dir():
        raise SearchError(f"{target} exists and is not a folder")
    existing = target.is_dir() and (target / MANIFEST_FILE).is_file()
    if target.exists() and not existing and any(target.iterdir()):
        raise SearchError(
            f"{target} exists and is not a shopsearch index; refusing to "
            f"overwrite it (choose another --index folder)"
        )
    products = sorted(products, key=lambda p: p.id)
    for a, b in zip(products, products[1:]):
        if a.id == b.id:
            raise SearchError(f"the catalogue has product id {a.id!r} twice")
    build = _Build(
        products,
        encoder=encoder,
        analyzer=analyzer or Analyzer(),
        bm25_params=bm25_params,
        factory=factory,
        fusion=fusion,
        batch_size=batch_size,
        show_progress=show_progress,
        source=source,
        candidate_depth=candidate_depth,
        notify=on_stage or (lambda _msg: None),
    )
    if existing:
        with writer_lock(target, "build-index"):
            manifest = build.publish_over(target, copy_reranker_from, reranker_record)
    else:
        manifest = build.publish_new(target, copy_reranker_from, reranker_record)
    n = len(products)
    return BuildSummary(
        path=target,
        products=n,
        seconds=time.perf_counter() - build.started,
        bytes_on_disk=index_size(target, manifest),
        encode_seconds=build.encode_seconds,
        texts_per_second=n / build.encode_seconds if build.encode_seconds else 0.0,
        factory=str(manifest.faiss["factory"]) if manifest.faiss else None,
        generation=manifest.generation,
    )


class _Build:
    """One build: its inputs, and writing its segment into a fresh or an existing folder."""

    def __init__(
        self,
        products: list[Product],
        *,
        encoder: Encoder | None,
        analyzer: Analyzer,
        bm25_params: BM25Params,
        factory: str | None,
        fusion: FusionConfig,
        batch_size: int,
        show_progress: bool,
        source: str,
        candidate_depth: int,
        notify: Callable[[str], None],
    ) -> None:
        self.products = products
        self.encoder = encoder
        self.analyzer = analyzer
        self.bm25_params = bm25_params
        self.factory = factory
        self.fusion = fusion
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.source = source
        self.candidate_depth = candidate_depth
        self.notify = notify
        self.started = time.perf_counter()
        self.encode_seconds = 0.0

    def write(self, folder: Path, generation: int) -> Manifest:
        """Write the segment into ``folder`` and return the manifest of the generation
        (without its reranker, not yet published)."""
        products = self.products
        texts = [p.text() for p in products]
        self.notify("BM25: analysing text")
        freqs = TermFrequencies.from_tokens(self.analyzer.tokenize_many(texts))
        vectors = encoder_info = faiss_info = None
        factory: str | None = None
        exact = True
        if self.encoder is not None:
            factory = self.factory or choose_factory(len(products))
            exact = is_exact_factory(factory, self.encoder.dim)  # a bad factory fails here
            self.notify(f"dense: encoding {len(texts)} products with {self.encoder.name}")
            t0 = time.perf_counter()
            vectors = encode(
                self.encoder, texts, self.encoder.dim, self.batch_size, self.show_progress
            )
            self.encode_seconds = time.perf_counter() - t0
            if not exact:
                self.notify(f"dense: building FAISS index {factory!r}")
            encoder_info = encoder_record(self.encoder)
            faiss_info = {"factory": factory, "metric": "inner_product", "ntotal": len(products)}
        content = SegmentContent(
            [p.id for p in products], [product_line(p) for p in products], freqs, vectors
        )
        record, files = write_segment(folder, generation, content, factory, exact)
        (folder / DELETES_DIR).mkdir(exist_ok=True)
        stamp = now()
        return Manifest(
            products=len(products),
            catalog_sha256=catalog_digest(products),
            analyzer=self.analyzer.config(),
            bm25=asdict(self.bm25_params),
            encoder=encoder_info,
            faiss=faiss_info,
            fusion=self.fusion.to_dict(),
            files=files,
            catalog_source=self.source,
            candidate_depth=self.candidate_depth,
            created=stamp,
            generation=generation,
            segments=[record],
            updated=stamp,
        )

    def publish_new(
        self, target: Path, reranker: Path | None, reranker_record: Mapping[str, Any] | None
    ) -> Manifest:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            manifest = self.write(tmp, generation=1)
            if reranker is not None and (reranker / "config.json").exists():
                shutil.copytree(reranker, tmp / RERANKER_DIR)
                manifest.reranker = {
                    **_reranker_info(tmp / RERANKER_DIR),
                    **(reranker_record or {}),
                }
            publish(tmp, manifest, None)
            try:
                # Onto a missing or empty folder: atomic. If another build created the index
                # meanwhile, this fails and that index stays as it was.
                os.replace(tmp, target)
            except OSError as exc:
                raise SearchError(
                    f"{target} was created by another process during this build ({exc}); "
                    f"run the build again"
                ) from None
            fsync_dir(target.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return manifest

    def publish_over(
        self, target: Path, reranker: Path | None, reranker_record: Mapping[str, Any] | None
    ) -> Manifest:
        previous = read_raw_manifest(target)
        old_generation = (previous or {}).get("generation")
        generation = (old_generation if isinstance(old_generation, int) else 0) + 1
        manifest = self.write(target, generation)
        try:
            if reranker is not None and (reranker / "config.json").exists():
                # The index's own reranker is kept where it is; another is staged beside it.
                here = Path(reranker)
                if here.resolve().parent != target.resolve():
                    here = target / _stage_reranker(target, here)
                manifest.reranker = {**_reranker_info(here), **(reranker_record or {})}
        except BaseException:
            shutil.rmtree(target / SEGMENTS_DIR / manifest.segments[0]["name"], ignore_errors=True)
            raise
        return publish(target, manifest, previous)


def reranker_folder(manifest: Manifest) -> str:
    """The index's reranker folder, relative to it: ``reranker/`` for one a build copied in,
    ``reranker-<id>/`` for one installed since (each install is a new folder)."""
    return str((manifest.reranker or {}).get("path") or RERANKER_DIR)


def _stage_reranker(index_dir: Path, source: Path) -> str:
    """Copy a reranker folder into the index as ``reranker-<id>/`` (``_stage_folder``)."""
    return _stage_folder(index_dir, source, RERANKER_DIR)


def _stage_folder(index_dir: Path, source: Path, prefix: str) -> str:
    """Copy a model folder into the index under a new name, ``<prefix>-<id>``, durably, and
    return the name.

    The manifest published next is what makes it the index's model (reranker or LTR); until
    then it is an unreferenced folder, which a kill leaves for the next writer's garbage
    collection. So an install is atomic like any generation: the old model with its record,
    or the new with its own, never the new model under the old record (its tuned blend)."""
    import uuid

    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    staged = index_dir / f".{name}.tmp"
    shutil.copytree(source, staged)
    for path in sorted(staged.rglob("*"), reverse=True):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        else:
            fsync_dir(path)
    fsync_dir(staged)
    os.rename(staged, index_dir / name)
    fsync_dir(index_dir)
    return name


def _reranker_info(folder: Path) -> dict[str, Any]:
    import json

    info: dict[str, Any] = {"path": folder.name}
    training = folder / "training.json"
    if training.is_file():
        data = json.loads(training.read_text(encoding="utf-8"))
        info["base_model"] = data.get("base_model")
        info["trained_on"] = data.get("trained_on")
    info["calibrated"] = (folder / "calibration.json").is_file()
    return info


_STRUCTURAL = frozenset({"files", "segments", "generation", "format", "format_version", "checksum"})


def update_manifest(folder: Path, **changes: Any) -> Manifest:
    """Change some manifest settings (e.g. a tuned fusion setting), published as the index's
    next generation under the writer lock. What the index holds (segments, files) is not a
    setting: ``search-cli update`` and ``compact`` change that."""
    with writer_lock(folder, "update-manifest"):
        return _update_manifest_locked(Path(folder), changes)


def _update_manifest_locked(folder: Path, changes: Mapping[str, Any]) -> Manifest:
    structural = _STRUCTURAL & set(changes)
    if structural:
        raise ValueError(f"update_manifest cannot change {sorted(structural)}")
    previous = Manifest.read(folder)
    manifest = replace(
        previous, **{**changes, "generation": previous.generation + 1, "updated": now()}
    )
    return publish(folder, manifest, previous)


def check_catalog(index_dir: Path, records: Sequence[Mapping[str, Any]], source: str) -> None:
    """Refuse judgements or logs whose catalogue is not the one an index holds: their
    product ids would point at other products (or none), and every metric would be wrong
    without an error. ``records`` are catalogue records, as a data set loader returns them."""
    manifest = Manifest.read(Path(index_dir))
    products = [record_to_product(dict(r), source, i) for i, r in enumerate(records, start=1)]
    if catalog_digest(products) != manifest.catalog_sha256:
        raise SearchError(
            f"index {index_dir} was built from another catalogue than {source} "
            f"({manifest.products} products indexed, {len(products)} in the data set; the "
            f"catalogue hashes differ): its judgements would point at other products. Build "
            f"the index from the data set's catalogue with `search-cli build-index --catalog`"
        )


def install_reranker(
    index_dir: Path, model_dir: Path, keep: Mapping[str, Any] | None = None
) -> Manifest:
    """Copy a fine-tuned reranker folder into an index, replacing any previous one, and
    publish the manifest that records it (under the writer lock). ``keep``: fields to record
    with it in the same generation (an exported model keeps its source's tuned blend)."""
    index_dir = Path(index_dir)
    Manifest.read(index_dir)
    with writer_lock(index_dir, "install-reranker"):
        name = _stage_reranker(index_dir, Path(model_dir))
        record = {**_reranker_info(index_dir / name), **(keep or {})}
        return _update_manifest_locked(index_dir, {"reranker": record})


LTR_DIR = "ltr"


def install_ltr(index_dir: Path, model_dir: Path, record: Mapping[str, Any]) -> Manifest:
    """Copy a learning-to-rank model folder (``model.txt`` + ``ltr.json``) into an index as
    ``ltr-<id>/``, replacing any previous one, and publish the manifest that records it with
    ``record`` (features, importances, the stage it reorders), under the writer lock: atomic
    like a reranker install."""
    index_dir = Path(index_dir)
    Manifest.read(index_dir)
    with writer_lock(index_dir, "install-ltr"):
        name = _stage_folder(index_dir, Path(model_dir), LTR_DIR)
        return _update_manifest_locked(index_dir, {"ltr": {**record, "path": name}})


@dataclass
class SearchIndex:
    """One generation of an index, loaded from disk: the live catalogue in id order (row i is
    BM25 document i and dense row i) exactly as a fresh build of it. The dense part is built
    on first use from what was read (and verified) at load."""

    path: Path
    manifest: Manifest
    products: list[Product]
    bm25: BM25Index
    analyzer: Analyzer
    _faiss: Any = field(default=None, repr=False)
    _filters: FilterIndex | None = field(default=None, repr=False)
    _make_faiss: Callable[[], Any] | None = field(default=None, repr=False)

    @property
    def generation(self) -> int:
        return self.manifest.generation

    @property
    def filters(self) -> FilterIndex:
        """The catalogue's filterable fields as arrays, compiled on first use."""
        if self._filters is None:
            self._filters = FilterIndex(self.products)
        return self._filters

    @property
    def has_dense(self) -> bool:
        return self.manifest.faiss is not None

    @property
    def faiss_index(self) -> Any:
        """A FAISS index over the catalogue rows, or a ``SegmentedDenseIndex`` (same search
        interface through ``retrieval.dense.search_index``) for an approximate index whose
        segments are not merged yet."""
        if self._faiss is None:
            if not self.has_dense or self._make_faiss is None:
                raise IndexLoadError(
                    f"index {self.path} has no dense part; rebuild it with --model"
                )
            self._faiss = self._make_faiss()
            self._make_faiss = None
        return self._faiss

    @property
    def reranker_path(self) -> Path | None:
        path = self.path / reranker_folder(self.manifest)
        return path if self.manifest.reranker and path.is_dir() else None

    @property
    def ltr_path(self) -> Path | None:
        """The installed learning-to-rank model's folder, if the manifest records one."""
        record = self.manifest.ltr or {}
        path = self.path / str(record.get("path") or LTR_DIR)
        return path if record and path.is_dir() else None


def load_index(
    folder: str | Path,
    *,
    verify_hashes: bool = True,
    bm25_stats: CollectionStats | None = None,
) -> SearchIndex:
    """Load the current generation of an index, refusing a missing, foreign, damaged or
    incompatible one. Every file read is checked against the manifest (its size, and its
    sha256 unless ``verify_hashes`` is False), so damage is an ``IndexLoadError`` naming the
    file, never a wrong answer. The manifest is read once, which pins the generation; if a
    writer collected one of its files meanwhile, the load starts again with the new one.
    ``bm25_stats``: the BM25 statistics of a larger collection this index is one shard of (a
    sharded index, shopsearch.distributed), so that its BM25 scores are that collection's;
    by default its own."""
    folder = Path(folder)
    for _attempt in range(LOAD_ATTEMPTS):
        manifest = Manifest.read(folder)
        try:
            return _load_generation(folder, manifest, verify_hashes, bm25_stats)
        except FileNotFoundError as exc:
            now_at = (read_raw_manifest(folder) or {}).get("generation")
            if now_at == manifest.generation:
                missing = Path(exc.filename or "?")
                name = missing.relative_to(folder) if missing.is_relative_to(folder) else missing
                raise IndexLoadError(
                    f"index {folder} is damaged: {name} is missing; rebuild it"
                ) from None
            logger.info(
                "generation %d of %s was replaced while loading", manifest.generation, folder
            )
    raise IndexLoadError(
        f"index {folder} changed {LOAD_ATTEMPTS} times while it was being opened; try again"
    )


@dataclass
class _Rows:
    """Where the live rows of each segment go in the catalogue: ``new_rows[s][local]`` is the
    catalogue row of segment ``s``'s local row (-1: deleted), catalogue rows in id order."""

    readers: list[SegmentReader]
    ids: list[list[str]]
    new_rows: list[np.ndarray]
    order: list[tuple[int, int]]  # catalogue row -> (segment, local row)


def live_rows(folder: Path, manifest: Manifest, reader: VerifiedReader) -> _Rows:
    readers = [SegmentReader(reader, record) for record in manifest.segments]
    ids = [r.ids() for r in readers]
    entries: list[tuple[str, int, int]] = []
    for s, (seg, seg_ids) in enumerate(zip(readers, ids)):
        deleted = seg.deleted()
        entries += [(seg_ids[i], s, i) for i in np.flatnonzero(~deleted).tolist()]
    entries.sort(key=lambda e: e[0])
    for a, b in zip(entries, entries[1:]):
        if a[0] == b[0]:
            raise reader.damaged(
                f"segments {readers[a[1]].name} and {readers[b[1]].name}",
                f"both hold product {a[0]!r} as live",
            )
    if len(entries) != manifest.products:
        raise reader.damaged(
            MANIFEST_FILE, f"says {manifest.products} products, the segments hold {len(entries)}"
        )
    new_rows = [np.full(r.rows, -1, dtype=np.int64) for r in readers]
    for row, (_, s, local) in enumerate(entries):
        new_rows[s][local] = row
    return _Rows(readers, ids, new_rows, [(s, local) for _, s, local in entries])


def index_analyzer(folder: Path, manifest: Manifest) -> Analyzer:
    """The analyser an index was built with, refusing one this version does not implement
    (its terms would not match the stored ones)."""
    current = Analyzer().config()
    if {k: manifest.analyzer.get(k) for k in ("name", "version")} != {
        k: current[k] for k in ("name", "version")
    }:
        raise IndexLoadError(
            f"index {folder} was analysed with {manifest.analyzer}, this "
            f"version uses {current}; rebuild it"
        )
    return Analyzer.from_config(manifest.analyzer)


def live_vectors(rows: _Rows, dim: int) -> np.ndarray:
    """The live vectors of every segment in catalogue order, shape ``(n, dim)`` float32."""
    vectors = np.zeros((len(rows.order), dim), dtype=np.float32)
    for seg, new in zip(rows.readers, rows.new_rows):
        live = new >= 0
        if live.any():
            vectors[new[live]] = seg.vectors(dim)[live]
    return vectors


def _load_generation(
    folder: Path, manifest: Manifest, verify: bool, bm25_stats: CollectionStats | None = None
) -> SearchIndex:
    analyzer = index_analyzer(folder, manifest)
    if manifest.faiss is not None and not (manifest.encoder or {}).get("dim"):
        raise IndexLoadError(f"index {folder} is damaged: its manifest has no encoder dim")
    check_files(folder, manifest)
    reader = VerifiedReader(folder, manifest, verify=verify)
    rows = live_rows(folder, manifest, reader)
    n = len(rows.order)
    per_segment = [seg.products(ids) for seg, ids in zip(rows.readers, rows.ids)]
    products = [per_segment[s][local] for s, local in rows.order]
    freqs = TermFrequencies.merge(
        [(seg.frequencies(), new) for seg, new in zip(rows.readers, rows.new_rows)], n
    )
    params = BM25Params(**{k: manifest.bm25[k] for k in ("k1", "b", "epsilon")})
    try:
        bm25 = BM25Index.from_frequencies(freqs, params, bm25_stats)
    except ValueError as exc:
        raise IndexLoadError(f"index {folder}: {exc}; rebuild it") from None
    make_faiss = _dense_loader(manifest, rows, n) if manifest.faiss is not None else None
    return SearchIndex(
        path=folder,
        manifest=manifest,
        products=products,
        bm25=bm25,
        analyzer=analyzer,
        _make_faiss=make_faiss,
    )


def _dense_loader(manifest: Manifest, rows: _Rows, n: int) -> Callable[[], Any]:
    """Read (and verify) what the dense part needs now, and return what builds it on first
    use: one exact FAISS index over the live vectors in catalogue order (what a fresh build
    makes), or the segments' own approximate indexes behind deletion masks."""
    assert manifest.faiss is not None and manifest.encoder is not None
    factory = str(manifest.faiss["factory"])
    dim = int(manifest.encoder["dim"])
    if is_exact_factory(factory, dim):
        vectors = live_vectors(rows, dim)
        return lambda: build_faiss_index(vectors, factory)
    parts: list[tuple[Any, np.ndarray]] = []
    for seg, new in zip(rows.readers, rows.new_rows):
        if seg.record.get("faiss"):
            parts.append((seg.faiss_index(), new))
        else:  # too small to train the factory when written: searched exactly
            parts.append((build_faiss_index(seg.vectors(dim), EXACT_FACTORY), new))
    if len(parts) == 1 and np.array_equal(parts[0][1], np.arange(n)):
        only = parts[0][0]
        return lambda: only
    return lambda: SegmentedDenseIndex(parts)
