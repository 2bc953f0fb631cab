import json

import numpy as np
import pytest

from shopsearch.errors import IndexLoadError, SearchError
from shopsearch.index.manifest import FORMAT_VERSION, Manifest
from shopsearch.index.store import build_index, load_index, update_manifest


def test_round_trip(built_index, products, keyword_encoder):
    index = load_index(built_index, verify_hashes=True)
    manifest = index.manifest
    assert manifest.products == 12 and manifest.format_version == FORMAT_VERSION
    assert manifest.encoder["name"] == "fake-keyword" and manifest.faiss["factory"] == "IDMap,Flat"
    assert [p.id for p in index.products] == sorted(p.id for p in products)
    assert index.faiss_index.ntotal == 12
    # The stored vectors are the encoder's vectors, row i = product i.
    texts = [p.text() for p in index.products]
    stored = index.faiss_index.index.reconstruct_n(0, 12)
    np.testing.assert_allclose(stored, keyword_encoder.encode_documents(texts), rtol=1e-6)
    assert not any(p.name.startswith(".") for p in built_index.parent.iterdir())


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


def test_damaged_files_are_detected(built_index):
    (built_index / "bm25_contributions.npy").write_bytes(b"garbage")
    with pytest.raises(IndexLoadError, match="damaged: bm25_contributions.npy"):
        load_index(built_index)


def test_newer_format_version_is_refused(built_index):
    data = json.loads((built_index / "manifest.json").read_text())
    data["format_version"] = FORMAT_VERSION + 1
    (built_index / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(IndexLoadError, match="rebuild"):
        load_index(built_index)


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


def test_rebuild_replaces_the_index(built_index, products, keyword_encoder):
    build_index(products[:5], built_index, encoder=keyword_encoder)
    assert load_index(built_index).manifest.products == 5


def test_update_manifest(built_index):
    update_manifest(built_index, fusion={"method": "convex", "alpha": 0.3})
    assert Manifest.read(built_index).fusion["alpha"] == 0.3
