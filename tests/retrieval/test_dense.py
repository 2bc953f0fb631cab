import numpy as np
import pytest

from shopsearch.retrieval.dense import build_faiss_index, choose_factory, search_index


def _vectors(n, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flat_equals_numpy_brute_force():
    docs, queries = _vectors(500), _vectors(7, seed=1)
    rows, scores = search_index(build_faiss_index(docs, "IDMap,Flat"), queries, 10)
    brute = queries @ docs.T
    expected = np.argsort(-brute, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(brute, expected, 1), rtol=1e-5)


def test_allowed_rows_filter_inside_faiss_returns_k():
    docs, queries = _vectors(300), _vectors(3, seed=2)
    allowed = np.arange(0, 300, 10)
    for factory in ("IDMap,Flat", "IDMap,HNSW32,Flat"):
        rows, _ = search_index(build_faiss_index(docs, factory), queries, 5, allowed)
        assert (rows % 10 == 0).all() and (rows >= 0).all()
    brute = queries @ docs[allowed].T
    rows, _ = search_index(build_faiss_index(docs, "IDMap,Flat"), queries, 5, allowed)
    np.testing.assert_array_equal(rows, allowed[np.argsort(-brute, axis=1)[:, :5]])


def test_fewer_products_than_k_pads_with_minus_one():
    rows, scores = search_index(build_faiss_index(_vectors(3), "IDMap,Flat"), _vectors(1), 5)
    assert list(rows[0, 3:]) == [-1, -1] and np.isinf(scores[0, 3:]).all()
    rows, _ = search_index(
        build_faiss_index(_vectors(3), "IDMap,Flat"), _vectors(1), 2, np.array([], dtype=np.int64)
    )
    assert (rows == -1).all()


def test_factory_choice_and_invalid_factory():
    assert choose_factory(1000) == "IDMap,Flat"
    assert "HNSW" in choose_factory(10_000_000)
    with pytest.raises(ValueError, match="factory"):
        build_faiss_index(_vectors(10), "NotAnIndex")
