"""``search-cli check``: verify an index against its manifest and say what is wrong.

Every file the manifest lists is checked for its size and sha256, then every segment's
structure (ids sorted and unique, one product line per row and matching it, BM25 arrays
consistent, vectors of the index's dimension, FAISS holding one vector per row, deletion masks
of the right length and count), then the whole: no product live twice, the live count and the
catalogue hash as the manifest records them, and the index opening as a query would open it.
Loading checks the same files as it reads them, so a damaged file is refused there too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shopsearch.errors import IndexLoadError
from shopsearch.index.manifest import Manifest
from shopsearch.index.segments import (
    FAISS_FILE,
    IDS_FILE,
    PRODUCTS_FILE,
    VECTORS_FILE,
    SegmentReader,
    VerifiedReader,
    catalog_digest,
    segment_file,
)


@dataclass
class CheckReport:
    index: Path
    problems: list[str] = field(default_factory=list)
    generation: int | None = None
    products: int | None = None
    segments: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": str(self.index),
            "ok": self.ok,
            "generation": self.generation,
            "products": self.products,
            "segments": self.segments,
            "problems": self.problems,
        }


def check_index(index_dir: str | Path) -> CheckReport:
    """Everything wrong with the current generation of an index, one line per problem."""
    index_dir = Path(index_dir)
    report = CheckReport(index_dir)
    try:
        manifest = Manifest.read(index_dir)
    except IndexLoadError as exc:
        report.problems.append(str(exc))
        return report
    report.generation = manifest.generation
    report.products = manifest.products
    report.segments = len(manifest.segments)
    bad_files = _check_files(index_dir, manifest, report.problems)
    reader = VerifiedReader(index_dir, manifest)
    dim = int((manifest.encoder or {}).get("dim") or 0)
    for record in manifest.segments:
        seg = SegmentReader(reader, record)
        if any(f.startswith(segment_file(seg.name, "")) for f in bad_files) or (
            record.get("deletes") in bad_files
        ):
            continue  # already reported
        expected = [PRODUCTS_FILE, IDS_FILE] + ([VECTORS_FILE] if manifest.faiss else [])
        expected += [FAISS_FILE] if record.get("faiss") else []
        for file in expected:
            if seg.path(file) not in manifest.files:
                report.problems.append(f"segment {seg.name}: the manifest lists no {file}")
        try:
            ids = seg.ids()
            seg.deleted()
            seg.products(ids)
            seg.frequencies()
            if manifest.faiss is not None:
                seg.vectors(dim)
                if record.get("faiss"):
                    seg.faiss_index()
        except (IndexLoadError, FileNotFoundError) as exc:
            report.problems.append(f"segment {seg.name}: {exc}")
    if report.problems:
        return report
    from shopsearch.index.store import load_index

    try:
        index = load_index(index_dir)
        if index.has_dense:
            ntotal = index.faiss_index.ntotal
            if ntotal != len(index.products):
                report.problems.append(
                    f"the dense index holds {ntotal} vectors for {len(index.products)} products"
                )
    except IndexLoadError as exc:
        report.problems.append(str(exc))
        return report
    # (A writer may have published since the manifest was read: compare with what loaded.)
    if catalog_digest(index.products) != index.manifest.catalog_sha256:
        report.problems.append(
            "the live products do not match the manifest's catalogue hash (catalog_sha256)"
        )
    return report


def _check_files(index_dir: Path, manifest: Manifest, problems: list[str]) -> set[str]:
    bad = set()
    for name, record in manifest.files.items():
        path = index_dir / name
        if not path.is_file():
            problems.append(f"{name}: missing")
            bad.add(name)
            continue
        size = path.stat().st_size
        if size != record.get("bytes"):
            problems.append(f"{name}: {size} bytes, the manifest says {record.get('bytes')}")
            bad.add(name)
            continue
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != record.get("sha256"):
            problems.append(f"{name}: does not match its checksum (sha256)")
            bad.add(name)
    return bad
