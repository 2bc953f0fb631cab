"""Changing an index in place: upserts, deletions and compaction, each one generation.

``update_index`` costs what the change costs, not what the catalogue costs: it reads the
segments' id lists and deletion masks (small), the products it replaces, the vectors it
reuses, analyses and encodes only the new texts, and writes one new segment plus a new mask for
each segment that lost rows. A replaced product whose text (``Product.text()``) is unchanged,
e.g. only its price changed, keeps its vector; an identical upsert changes nothing. BM25's
statistics are not stored, so nothing else needs rewriting: opening the index applies them
over every live row (``store.load_index``), and its scores equal a fresh build's.

``compact_index`` merges the live rows of every segment into one (no re-encoding: the vectors
are stored) and rebuilds the FAISS index of an approximate factory, which until then hides
deleted rows behind ID selectors. An update compacts by itself once deleted rows pass
``COMPACT_SHARE`` of all rows or segments pass ``MAX_SEGMENTS``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from shopsearch.errors import DataError, SearchError
from shopsearch.index.generations import publish
from shopsearch.index.lock import writer_lock
from shopsearch.index.manifest import Manifest
from shopsearch.index.segments import (
    SegmentContent,
    SegmentReader,
    VerifiedReader,
    adjust_digest,
    product_line,
    segment_file,
    write_mask,
    write_segment,
)
from shopsearch.index.store import (
    encode,
    encoder_record,
    index_analyzer,
    live_rows,
    live_vectors,
    now,
)
from shopsearch.retrieval.analysis import Analyzer
from shopsearch.retrieval.base import Encoder
from shopsearch.retrieval.bm25 import TermFrequencies
from shopsearch.retrieval.dense import is_exact_factory
from shopsearch.retrieval.types import Product

COMPACT_SHARE = 0.3
MAX_SEGMENTS = 10


@dataclass
class CompactSummary:
    index: Path
    generation_before: int
    generation: int
    segments_before: int
    segments: int
    rows_before: int
    products: int
    seconds: float
    reason: str | None = None

    @property
    def compacted(self) -> bool:
        return self.generation != self.generation_before

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": str(self.index),
            "compacted": self.compacted,
            "reason": self.reason,
            "generation_before": self.generation_before,
            "generation": self.generation,
            "segments_before": self.segments_before,
            "segments": self.segments,
            "rows_before": self.rows_before,
            "deleted_rows_dropped": self.rows_before - self.products,
            "products": self.products,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class UpdateSummary:
    """What an update changed. ``reencoded``: the added and replaced products whose vectors
    were computed (the others kept theirs); empty for an index without a dense part."""

    index: Path
    generation_before: int
    generation: int
    products: int
    segments: int
    seconds: float
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    reencoded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    encode_seconds: float = 0.0
    compaction: CompactSummary | None = None

    def to_dict(self) -> dict[str, Any]:
        lists = ("added", "replaced", "reencoded", "unchanged", "deleted", "not_found")
        return {
            "index": str(self.index),
            "generation_before": self.generation_before,
            "generation": self.generation,
            **{name: len(getattr(self, name)) for name in lists},
            "products": self.products,
            "segments": self.segments,
            "seconds": round(self.seconds, 3),
            "encode_seconds": round(self.encode_seconds, 3),
            "compaction": self.compaction.to_dict() if self.compaction else None,
            "ids": {name: getattr(self, name) for name in lists},
        }


def read_ids(path: str | Path) -> list[str]:
    """Product ids from a text file, one per line (blank lines skipped, duplicates kept once)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file of ids not found", path=str(path))
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text ({exc.reason})", path=str(path)) from None
    ids = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if not ids:
        raise DataError("no product ids in the file (one id per line)", path=str(path))
    return ids


class _LiveIds:
    """The writer's view of one generation: where each live id is, and the rows it reads."""

    def __init__(self, folder: Path, manifest: Manifest) -> None:
        self.reader = VerifiedReader(folder, manifest)
        self.segments = [SegmentReader(self.reader, r) for r in manifest.segments]
        self.ids = [seg.ids() for seg in self.segments]
        self.deleted = [seg.deleted() for seg in self.segments]
        self.where: dict[str, tuple[int, int]] = {}
        for s, (ids, deleted) in enumerate(zip(self.ids, self.deleted)):
            for local in np.flatnonzero(~deleted).tolist():
                if ids[local] in self.where:
                    raise self.reader.damaged(
                        f"segment {self.segments[s].name}", f"repeats live id {ids[local]!r}"
                    )
                self.where[ids[local]] = (s, local)
        self._vectors: dict[int, np.ndarray] = {}

    def product(self, product_id: str) -> Product:
        """The live product of this id (only its line is parsed)."""
        s, local = self.where[product_id]
        return self.segments[s].products(self.ids[s], [local])[0]

    def vector(self, product_id: str, dim: int) -> np.ndarray:
        s, local = self.where[product_id]
        if s not in self._vectors:
            self._vectors[s] = self.segments[s].vectors(dim)
        return self._vectors[s][local]


def update_index(
    index_dir: str | Path,
    upserts: Sequence[Product] = (),
    deletes: Iterable[str] = (),
    *,
    encoder: Encoder | Callable[[], Encoder] | None = None,
    analyzer: Analyzer | None = None,
    batch_size: int = 64,
    compact: bool = True,
    compact_share: float = COMPACT_SHARE,
    max_segments: int = MAX_SEGMENTS,
) -> UpdateSummary:
    """Upsert ``upserts`` (a new id is added, a known one replaced) and delete ``deletes``
    (ids not in the index are reported in ``not_found`` and skipped), as one new generation.

    ``encoder``: the index's own encoder, or a function that loads it (called only when some
    text must be encoded); required when the index has a dense part and a text changed.
    ``analyzer``: one to reuse across updates (jieba loads its dictionary once per analyser);
    it must be configured as the index's.
    ``compact``: compact afterwards when the share of deleted rows passes ``compact_share``
    or the segments pass ``max_segments``.
    """
    started = time.perf_counter()
    index_dir = Path(index_dir)
    upserts = list(upserts)
    delete_ids = list(dict.fromkeys(deletes))
    seen: set[str] = set()
    for product in upserts:
        if product.id in seen:
            raise SearchError(f"product {product.id!r} is upserted twice in one update")
        seen.add(product.id)
    both = sorted(seen & set(delete_ids))
    if both:
        raise SearchError(
            f"{len(both)} product(s) are both upserted and deleted (e.g. {both[0]!r}); "
            f"do one or the other"
        )
    Manifest.read(index_dir)  # a clear message for a missing or foreign folder
    with writer_lock(index_dir, "update"):
        manifest = Manifest.read(index_dir)
        recorded = index_analyzer(index_dir, manifest)
        if analyzer is None:
            analyzer = recorded
        elif analyzer.config() != recorded.config():
            raise SearchError(
                f"index {index_dir} was analysed with {manifest.analyzer}, the analyser "
                f"given is {analyzer.config()}"
            )
        live = _LiveIds(index_dir, manifest)
        summary = UpdateSummary(
            index=index_dir,
            generation_before=manifest.generation,
            generation=manifest.generation,
            products=manifest.products,
            segments=len(manifest.segments),
            seconds=0.0,
        )
        change = _plan(live, upserts, delete_ids, summary)
        if change.new or change.removed:
            products_after = manifest.products + len(summary.added) - len(summary.deleted)
            if products_after < 1:
                raise SearchError(
                    f"this update would delete every product of {index_dir}; an index holds "
                    f"at least one (build a new one with `search-cli build-index`)"
                )
            updated = _write_change(
                index_dir, manifest, change, live, analyzer, summary, encoder, batch_size
            )
            publish(index_dir, updated, manifest)
            summary.generation = updated.generation
            summary.products = updated.products
            summary.segments = len(updated.segments)
            reason = compaction_reason(updated, compact_share, max_segments) if compact else None
            if reason is not None:
                summary.compaction = _compact_locked(index_dir, updated, reason)
                summary.generation = summary.compaction.generation
                summary.segments = summary.compaction.segments
    summary.seconds = time.perf_counter() - started
    return summary


@dataclass
class _Change:
    """What one update does: the products its new segment holds (added and replaced, in id
    order), those it removes (old versions of replaced ones, deleted ones), and the replaced
    products whose text is unchanged, which keep their vectors."""

    new: list[Product]
    removed: list[Product]
    keep_vector: set[str]


def _plan(
    live: _LiveIds, upserts: list[Product], delete_ids: list[str], summary: UpdateSummary
) -> _Change:
    change = _Change([], [], set())
    for product in upserts:
        if product.id not in live.where:
            summary.added.append(product.id)
            change.new.append(product)
            continue
        old = live.product(product.id)
        if old.to_dict() == product.to_dict():
            summary.unchanged.append(product.id)
            continue
        summary.replaced.append(product.id)
        change.removed.append(old)
        change.new.append(product)
        if old.text() == product.text():
            change.keep_vector.add(product.id)
    for product_id in delete_ids:
        if product_id in live.where:
            summary.deleted.append(product_id)
            change.removed.append(live.product(product_id))
        else:
            summary.not_found.append(product_id)
    change.new.sort(key=lambda p: p.id)
    return change


def _write_change(
    index_dir: Path,
    manifest: Manifest,
    change: _Change,
    live: _LiveIds,
    analyzer: Analyzer,
    summary: UpdateSummary,
    encoder: Encoder | Callable[[], Encoder] | None,
    batch_size: int,
) -> Manifest:
    """Write the new segment and masks of ``change`` durably; return the manifest of the
    generation that publishes them."""
    generation = manifest.generation + 1
    # The segment first: encoding is what may fail (no encoder, a model error).
    new_segment = (
        _write_segment_of(
            index_dir, manifest, generation, change, live, analyzer, summary, encoder, batch_size
        )
        if change.new
        else None
    )
    segments = [dict(record) for record in manifest.segments]
    files = dict(manifest.files)
    gone: dict[int, list[int]] = {}
    for product in change.removed:
        s, local = live.where[product.id]
        gone.setdefault(s, []).append(local)
    for s, rows in sorted(gone.items()):
        mask = live.deleted[s].copy()
        mask[rows] = True
        if segments[s]["deletes"] is not None:
            del files[segments[s]["deletes"]]
        if mask.all():  # nothing live left: the segment leaves the index
            prefix = segment_file(segments[s]["name"], "")
            files = {f: r for f, r in files.items() if not f.startswith(prefix)}
            segments[s] = {}
            continue
        path, mask_record = write_mask(index_dir, segments[s]["name"], generation, mask)
        files[path] = mask_record
        segments[s].update(deletes=path, deleted=int(mask.sum()))
    segments = [record for record in segments if record]
    if new_segment is not None:
        segments.append(new_segment[0])
        files.update(new_segment[1])
    products = manifest.products + len(summary.added) - len(summary.deleted)
    return replace(
        manifest,
        products=products,
        catalog_sha256=adjust_digest(manifest.catalog_sha256, change.removed, change.new),
        faiss={**manifest.faiss, "ntotal": products} if manifest.faiss else None,
        files=files,
        segments=segments,
        generation=generation,
        updated=now(),
    )


def _write_segment_of(
    index_dir: Path,
    manifest: Manifest,
    generation: int,
    change: _Change,
    live: _LiveIds,
    analyzer: Analyzer,
    summary: UpdateSummary,
    encoder: Encoder | Callable[[], Encoder] | None,
    batch_size: int,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    new = change.new
    texts = [p.text() for p in new]
    freqs = TermFrequencies.from_tokens(analyzer.tokenize_many(texts))
    vectors = None
    exact = True
    factory = None
    if manifest.faiss is not None:
        recorded = manifest.encoder or {}
        dim = int(recorded["dim"])
        factory = str(manifest.faiss["factory"])
        exact = is_exact_factory(factory, dim)
        vectors = np.zeros((len(new), dim), dtype=np.float32)
        todo = []
        for i, p in enumerate(new):
            if p.id in change.keep_vector:
                vectors[i] = live.vector(p.id, dim)
            else:
                todo.append(i)
        if todo:
            model = _resolve_encoder(encoder, index_dir, recorded)
            t0 = time.perf_counter()
            vectors[todo] = encode(model, [texts[i] for i in todo], dim, batch_size)
            summary.encode_seconds = time.perf_counter() - t0
            summary.reencoded = [new[i].id for i in todo]
    content = SegmentContent([p.id for p in new], [product_line(p) for p in new], freqs, vectors)
    return write_segment(index_dir, generation, content, factory, exact)


def _resolve_encoder(
    encoder: Encoder | Callable[[], Encoder] | None, index_dir: Path, recorded: dict[str, Any]
) -> Encoder:
    if encoder is None:
        raise SearchError(
            f"index {index_dir} has a dense part: updating its products needs its encoder "
            f"({recorded.get('name')!r}), and none was given"
        )
    model = encoder if isinstance(encoder, Encoder) else encoder()
    name = encoder_record(model).get("name")
    if name != recorded.get("name"):
        raise SearchError(
            f"index {index_dir} was built with model {recorded.get('name')!r}; this update's "
            f"encoder is {name!r}, whose vectors would not be comparable"
        )
    return model


def compaction_reason(manifest: Manifest, share: float, max_segments: int) -> str | None:
    """Why an index should be compacted now, or None."""
    rows = sum(int(s["rows"]) for s in manifest.segments)
    deleted = sum(int(s["deleted"]) for s in manifest.segments)
    if rows and deleted / rows > share:
        return f"{deleted} of {rows} rows are deleted (over {share:.0%})"
    if len(manifest.segments) > max_segments:
        return f"{len(manifest.segments)} segments (over {max_segments})"
    return None


def compact_index(index_dir: str | Path) -> CompactSummary:
    """Merge every segment's live rows into one segment, as one new generation (nothing is
    re-encoded). An index of one segment without deletions is left as it is."""
    index_dir = Path(index_dir)
    Manifest.read(index_dir)
    with writer_lock(index_dir, "compact"):
        return _compact_locked(index_dir, Manifest.read(index_dir), None)


def _compact_locked(index_dir: Path, manifest: Manifest, reason: str | None) -> CompactSummary:
    started = time.perf_counter()
    rows_before = sum(int(s["rows"]) for s in manifest.segments)
    summary = CompactSummary(
        index=index_dir,
        generation_before=manifest.generation,
        generation=manifest.generation,
        segments_before=len(manifest.segments),
        segments=len(manifest.segments),
        rows_before=rows_before,
        products=manifest.products,
        seconds=0.0,
        reason=reason,
    )
    if len(manifest.segments) == 1 and not manifest.segments[0]["deleted"]:
        summary.seconds = time.perf_counter() - started
        return summary
    reader = VerifiedReader(index_dir, manifest)
    rows = live_rows(index_dir, manifest, reader)
    n = len(rows.order)
    lines = [seg.lines() for seg in rows.readers]
    ids = [rows.ids[s][local] for s, local in rows.order]
    freqs = TermFrequencies.merge(
        [(seg.frequencies(), new) for seg, new in zip(rows.readers, rows.new_rows)], n
    )
    vectors = factory = None
    exact = True
    if manifest.faiss is not None:
        dim = int((manifest.encoder or {})["dim"])
        factory = str(manifest.faiss["factory"])
        exact = is_exact_factory(factory, dim)
        vectors = live_vectors(rows, dim)
    generation = manifest.generation + 1
    content = SegmentContent(ids, [lines[s][local] for s, local in rows.order], freqs, vectors)
    record, files = write_segment(index_dir, generation, content, factory, exact)
    compacted = replace(
        manifest, files=files, segments=[record], generation=generation, updated=now()
    )
    publish(index_dir, compacted, manifest)
    summary.generation = generation
    summary.segments = 1
    summary.seconds = time.perf_counter() - started
    return summary
