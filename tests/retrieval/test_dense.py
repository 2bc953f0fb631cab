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


def test_segmented_search_equals_one_flat_index_over_the_live_rows():
    from shopsearch.retrieval.dense import SegmentedDenseIndex

    rng = np.random.default_rng(3)
    segments = [_vectors(120, seed=4), _vectors(60, seed=5), _vectors(30, seed=6)]
    # Catalogue rows of each local row, -1 for deleted ones, live rows a permutation.
    live = [rng.random(len(s)) < 0.75 for s in segments]
    n = int(sum(m.sum() for m in live))
    catalogue_rows = rng.permutation(n)
    maps, start = [], 0
    for mask in live:
        rows = np.full(len(mask), -1)
        rows[mask] = catalogue_rows[start : start + mask.sum()]
        start += mask.sum()
        maps.append(rows)
    union = np.zeros((n, 32), dtype=np.float32)
    for vectors, rows in zip(segments, maps):
        union[rows[rows >= 0]] = vectors[rows >= 0]
    segmented = SegmentedDenseIndex(
        [(build_faiss_index(v, "IDMap,Flat"), rows) for v, rows in zip(segments, maps)]
    )
    flat = build_faiss_index(union, "IDMap,Flat")
    assert segmented.ntotal == n
    queries = _vectors(5, seed=7)
    for allowed in (None, np.arange(0, n, 3), np.array([], dtype=np.int64)):
        got = search_index(segmented, queries, 10, allowed)
        want = search_index(flat, queries, 10, allowed)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_allclose(got[1], want[1], rtol=1e-6)
    rows, scores = search_index(segmented, queries, n + 5)  # more than there are: padded
    assert (rows[:, n:] == -1).all() and np.isinf(scores[:, n:]).all()
    assert sorted(rows[0, :n]) == list(range(n))
