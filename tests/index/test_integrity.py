"""`check` and load refuse a damaged index, naming the file, whatever kind of file it is."""

from __future__ import annotations

from dataclasses import replace

import pytest

from shopsearch.errors import IndexLoadError
from shopsearch.index.integrity import check_index
from shopsearch.index.manifest import Manifest
from shopsearch.index.store import build_index, load_index
from shopsearch.index.update import update_index


@pytest.fixture
def two_segment_index(tmp_path, products, keyword_encoder):
    """An HNSW index with two segments and a deletion mask: every kind of file there is."""
    index_dir = tmp_path / "idx"
    build_index(products, index_dir, encoder=keyword_encoder, factory="IDMap,HNSW32,Flat")
    update_index(
        index_dir,
        [replace(products[0], title="oak bed frame")],
        ["p02"],
        encoder=keyword_encoder,
        compact=False,
    )
    return index_dir


def test_a_sound_index_passes(two_segment_index):
    report = check_index(two_segment_index)
    assert report.ok, report.problems
    assert (report.products, report.segments, report.generation) == (11, 2, 2)


def _kinds(manifest):
    """One file of each kind: the manifest's files by their name, the mask by its folder."""
    kinds = {}
    for path in manifest.files:
        kind = "deletion mask" if path.startswith("deletes/") else path.rsplit("/", 1)[1]
        kinds.setdefault(kind, path)
    return kinds


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_every_kind_of_damaged_file_is_refused(two_segment_index, damage):
    manifest = Manifest.read(two_segment_index)
    kinds = _kinds(manifest)
    assert len(kinds) == 10  # 7 BM25/catalogue files, vectors, FAISS, deletion mask
    for kind, path in kinds.items():
        target = two_segment_index / path
        original = target.read_bytes()
        if damage == "flip":
            middle = len(original) // 2
            target.write_bytes(
                original[:middle] + bytes([original[middle] ^ 0x01]) + original[middle + 1 :]
            )
        else:
            target.write_bytes(original[: len(original) - 1])
        try:
            report = check_index(two_segment_index)
            assert not report.ok and any(path in p for p in report.problems), (kind, report)
            if kind == "vectors.npy" and damage == "flip":
                # An HNSW segment answers from its FAISS file; its vectors (read by updates
                # and compaction, which verify them) are not read at load, only sized.
                load_index(two_segment_index)
            else:
                with pytest.raises(IndexLoadError, match=rf"damaged: {path}"):
                    load_index(two_segment_index)
        finally:
            target.write_bytes(original)
    assert check_index(two_segment_index).ok


def test_a_damaged_segment_is_not_propagated_by_an_update(
    two_segment_index, products, keyword_encoder
):
    manifest = Manifest.read(two_segment_index)
    vectors = next(p for p in manifest.files if p.endswith("vectors.npy"))
    data = bytearray((two_segment_index / vectors).read_bytes())
    data[-1] ^= 0x01
    (two_segment_index / vectors).write_bytes(bytes(data))
    with pytest.raises(IndexLoadError, match="checksum"):
        update_index(
            two_segment_index, [replace(products[3], price=1.0)], [], encoder=keyword_encoder
        )


def test_damaged_and_missing_manifest_or_files(two_segment_index):
    manifest_path = two_segment_index / "manifest.json"
    original = manifest_path.read_bytes()
    manifest_path.write_bytes(original.replace(b'"products": 11', b'"products": 12'))
    report = check_index(two_segment_index)
    assert not report.ok and "checksum" in report.problems[0]
    manifest_path.write_bytes(original)
    (two_segment_index / next(iter(Manifest.read(two_segment_index).files))).unlink()
    report = check_index(two_segment_index)
    assert not report.ok and "missing" in report.problems[0]
    with pytest.raises(IndexLoadError, match="missing"):
        load_index(two_segment_index)
