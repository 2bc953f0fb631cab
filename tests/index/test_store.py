import json

import numpy as np
import pytest

from shopsearch.errors import IndexLoadError, SearchError
from shopsearch.index.manifest import FORMAT_VERSION, Manifest
from shopsearch.index.store import build_index, load_index, update_manifest


def _segment(index_dir):
    (segment,) = (index_dir / "segments").iterdir()
    return segment


def test_round_trip(built_index, products, keyword_encoder):
    index = load_index(built_index, verify_hashes=True)
    manifest = index.manifest
    assert manifest.products == 12 and manifest.format_version == FORMAT_VERSION == 2
    assert manifest.generation == 1 and len(manifest.segments) == 1
    assert manifest.encoder["name"] == "fake-keyword" and manifest.faiss["factory"] == "IDMap,Flat"
    assert [p.id for p in index.products] == sorted(p.id for p in products)
    assert index.faiss_index.ntotal == 12
    # The stored vectors are the encoder's vectors, row i = product i.
    texts = [p.text() for p in index.products]
    stored = index.faiss_index.index.reconstruct_n(0, 12)
    np.testing.assert_allclose(stored, keyword_encoder.encode_documents(texts), rtol=1e-6)
    assert not any(p.name.startswith(".") for p in built_index.parent.iterdir())
    # Every file of the generation is in the manifest, with its size and hash.
    on_disk = {
        str(p.relative_to(built_index))
        for p in (built_index / "segments").rglob("*")
        if p.is_file()
    }
    assert on_disk == set(manifest.files)


def test_layout_of_a_segment(built_index):
    names = {p.name for p in _segment(built_index).iterdir()}
    assert names == {
        "products.jsonl",
        "ids.json",
        "bm25_terms.json",
        "bm25_indptr.npy",
        "bm25_doc_indices.npy",
        "bm25_tf.npy",
        "bm25_doc_lengths.npy",
        "vectors.npy",  # an exact factory needs no FAISS file: it is built from these
    }


def test_hnsw_segment_stores_its_faiss_index(tmp_path, products, keyword_encoder):
    build_index(products, tmp_path / "h", encoder=keyword_encoder, factory="IDMap,HNSW32,Flat")
    assert (_segment(tmp_path / "h") / "dense.faiss").is_file()
    assert load_index(tmp_path / "h").faiss_index.ntotal == 12


def test_bm25_only_index(tmp_path, products):
    build_index(products, tmp_path / "b", encoder=None)
    index = load_index(tmp_path / "b")
    assert not index.has_dense and index.manifest.encoder is None
    with pytest.raises(IndexLoadError, match="no dense part"):
        _ = index.faiss_index


def test_missing_and_foreign_folders(tmp_path):
    with pytest.raises(IndexLoadError, match="does not exist"):
        load_index(tmp_path / "nothing")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.txt").write_text("hi")
    with pytest.raises(IndexLoadError, match="not a shopsearch index"):
        load_index(tmp_path / "foreign")
    (tmp_path / "foreign" / "manifest.json").write_text('{"format": "other"}')
    with pytest.raises(IndexLoadError, match="not a shopsearch index"):
        load_index(tmp_path / "foreign")


def test_refuses_to_overwrite_a_foreign_folder(tmp_path, products):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "keep.txt").write_text("precious")
    with pytest.raises(SearchError, match="not a shopsearch index"):
        build_index(products, tmp_path / "docs", encoder=None)
    assert (tmp_path / "docs" / "keep.txt").read_text() == "precious"


def test_builds_into_an_empty_folder(tmp_path, products):
    (tmp_path / "empty").mkdir()
    build_index(products, tmp_path / "empty", encoder=None)
    assert load_index(tmp_path / "empty").manifest.products == 12


def test_duplicate_ids_are_refused(tmp_path, products):
    with pytest.raises(SearchError, match="twice"):
        build_index(products + products[:1], tmp_path / "d", encoder=None)


def test_damaged_files_are_detected(built_index):
    path = _segment(built_index) / "bm25_tf.npy"
    path.write_bytes(b"garbage")
    with pytest.raises(IndexLoadError, match=r"damaged: segments/.*/bm25_tf.npy has 7 bytes"):
        load_index(built_index)


def test_newer_format_version_is_refused(built_index):
    data = json.loads((built_index / "manifest.json").read_text())
    data["format_version"] = FORMAT_VERSION + 1
    (built_index / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(IndexLoadError, match="rebuild"):
        load_index(built_index)


def _wave_one_index(folder):
    """The manifest of a format-1 index (BM25 contributions baked for one catalogue)."""
    folder.mkdir()
    manifest = {
        "format": "shopsearch-index",
        "format_version": 1,
        "products": 1,
        "files": {"products.jsonl": {"bytes": 30, "sha256": "x"}},
        "reranker": None,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "products.jsonl").write_text('{"id": "1", "title": "bed"}\n')
    (folder / "bm25_contributions.npy").write_bytes(b"old")


def test_wave_one_index_is_refused_with_the_rebuild_command(tmp_path, products):
    _wave_one_index(tmp_path / "old")
    with pytest.raises(IndexLoadError, match=r"format version 1.*search-cli build-index --index"):
        load_index(tmp_path / "old")
    # Rebuilding over it works, in place, and leaves none of the old files.
    build_index(products, tmp_path / "old", encoder=None)
    assert load_index(tmp_path / "old").manifest.products == 12
    assert not (tmp_path / "old" / "bm25_contributions.npy").exists()
    assert not (tmp_path / "old" / "products.jsonl").exists()


def test_failed_rebuild_leaves_the_old_index_intact(built_index, products):
    before = (built_index / "manifest.json").read_text()

    class Exploding:
        name, dim = "boom", 3

        def encode_documents(self, texts, batch_size=64, show_progress=False):
            raise RuntimeError("encoder crashed mid-build")

    with pytest.raises(RuntimeError, match="mid-build"):
        build_index(products[:3], built_index, encoder=Exploding())
    assert (built_index / "manifest.json").read_text() == before
    assert load_index(built_index).manifest.products == 12
    assert not [p for p in built_index.parent.iterdir() if p.name.startswith(".")]
    assert not [p for p in (built_index / "segments").iterdir() if p.name.startswith(".")]


def test_rebuild_is_a_new_generation_and_old_files_go_two_generations_later(
    built_index, products, keyword_encoder
):
    first = _segment(built_index).name
    build_index(products[:5], built_index, encoder=keyword_encoder)
    index = load_index(built_index)
    assert index.manifest.products == 5 and index.generation == 2
    # A reader that read generation 1's manifest a moment ago still finds its files.
    assert (built_index / "segments" / first).is_dir()
    build_index(products[:4], built_index, encoder=keyword_encoder)
    assert not (built_index / "segments" / first).exists()
    assert len(list((built_index / "segments").iterdir())) == 2


def test_update_manifest_publishes_a_generation_and_keeps_the_segments(built_index):
    before = Manifest.read(built_index)
    update_manifest(built_index, fusion={"method": "convex", "alpha": 0.3})
    after = Manifest.read(built_index)
    assert after.fusion["alpha"] == 0.3 and after.generation == before.generation + 1
    assert after.segments == before.segments and after.files == before.files
    assert load_index(built_index).manifest.fusion["alpha"] == 0.3
    with pytest.raises(ValueError, match="segments"):
        update_manifest(built_index, segments=[])


def test_a_hand_edited_manifest_is_refused(built_index):
    data = json.loads((built_index / "manifest.json").read_text())
    data["bm25"]["k1"] = 1.2
    (built_index / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(IndexLoadError, match="checksum"):
        load_index(built_index)


def test_a_reader_whose_generation_was_collected_retries_with_the_current_one(
    built_index, products, keyword_encoder, monkeypatch
):
    stale = Manifest.read(built_index)  # what a slow reader read before two publishes
    build_index(products[:5], built_index, encoder=keyword_encoder)
    build_index(products[:4], built_index, encoder=keyword_encoder)  # generation 1 collected
    real = Manifest.read.__func__
    reads = []

    def read(cls, folder):
        reads.append(folder)
        return stale if len(reads) == 1 else real(cls, folder)

    monkeypatch.setattr(Manifest, "read", classmethod(read))
    index = load_index(built_index)
    assert index.generation == 3 and index.manifest.products == 4 and len(reads) == 2
