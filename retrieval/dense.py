"""Dense (bi-encoder) search over a FAISS inner-product index of L2-normalised vectors.

The FAISS index type is configuration: a factory string recorded in the index manifest.
Ids stored in FAISS are catalogue row numbers; the id map (row -> product id) lives beside it.
An index kept in segments (index/segments.py) answers through ``SegmentedDenseIndex``: one
FAISS index per segment, whose deleted rows an ID selector hides, merged into catalogue rows.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

# Below this many products exact search is fast enough (a few ms per query) and loses nothing.
APPROXIMATE_THRESHOLD = 200_000
EXACT_FACTORY = "IDMap,Flat"
APPROXIMATE_FACTORY = "IDMap,HNSW32,Flat"
DEFAULT_EF_SEARCH = 128


def choose_factory(n_vectors: int, threshold: int = APPROXIMATE_THRESHOLD) -> str:
    """Exact search for small catalogues, HNSW above ``threshold`` vectors."""
    return EXACT_FACTORY if n_vectors < threshold else APPROXIMATE_FACTORY


def build_faiss_index(vectors: np.ndarray, factory: str) -> Any:
    """An inner-product FAISS index over ``vectors`` (shape ``(n, dim)``, float32, normalised),
    with FAISS ids equal to row numbers."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"invalid FAISS factory string {factory!r}: {exc}") from exc
    if not index.is_trained:
        index.train(vectors)
    index.add_with_ids(vectors, np.arange(n, dtype=np.int64))
    return index


def is_exact_factory(factory: str, dim: int) -> bool:
    """Whether ``factory`` makes an exhaustive (flat) index, which searches every vector."""
    import faiss

    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"invalid FAISS factory string {factory!r}: {exc}") from exc
    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    return isinstance(inner, faiss.IndexFlat)


def _search_parameters(
    index: Any, allowed_rows: np.ndarray | None, ef_search: int, nprobe: int, selector: Any = None
) -> Any:
    import faiss

    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    if selector is None and allowed_rows is not None:
        selector = faiss.IDSelectorBatch(np.asarray(allowed_rows, dtype=np.int64))
    # faiss's bundled stubs lack the search-parameter classes' keyword constructors.
    if isinstance(inner, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=selector, efSearch=ef_search)  # type: ignore[attr-defined]
    if isinstance(inner, faiss.IndexIVF):
        return faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)  # type: ignore[call-arg]
    return faiss.SearchParameters(sel=selector) if selector is not None else None  # type: ignore[call-arg]


def search_index(
    index: Any,
    query_vectors: np.ndarray,
    k: int,
    allowed_rows: np.ndarray | None = None,
    *,
    ef_search: int = DEFAULT_EF_SEARCH,
    nprobe: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` rows and inner products per query, shapes ``(n_queries, k)``.

    ``allowed_rows`` restricts the search inside FAISS (an ID selector) rather than filtering
    afterwards, so a filtered query still gets ``k`` results when ``k`` products qualify.
    Missing results are row -1 with score -inf.
    """
    if isinstance(index, SegmentedDenseIndex):
        return index.search(query_vectors, k, allowed_rows, ef_search=ef_search, nprobe=nprobe)
    query_vectors = np.ascontiguousarray(query_vectors, dtype=np.float32)
    if allowed_rows is not None and len(allowed_rows) == 0:
        n = len(query_vectors)
        return np.full((n, k), -1, dtype=np.int64), np.full((n, k), -np.inf, dtype=np.float32)
    k_eff = min(k, index.ntotal)
    params = _search_parameters(index, allowed_rows, ef_search, nprobe)
    scores, rows = index.search(query_vectors, k_eff, params=params)
    scores = np.where(rows < 0, -np.inf, scores).astype(np.float32)
    if k_eff < k:
        pad = k - k_eff
        rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return rows, scores


class SegmentedDenseIndex:
    """Dense search over an index kept in segments, answering in catalogue rows.

    Each part is a FAISS index over one segment's rows (FAISS ids = the segment's local rows)
    and ``rows``, shape ``(n_local,)`` int64, the catalogue row of each local row, -1 for a
    deleted one. Deleted rows are excluded inside FAISS by a bitmap ID selector (HNSW cannot
    delete), so each part still returns ``k`` live rows when it has them; the parts' lists are
    merged by (score descending, catalogue row), as one index over the live rows would order
    them. ``ntotal`` is the number of live rows.
    """

    def __init__(self, parts: Sequence[tuple[Any, np.ndarray]]) -> None:
        self.parts = [(index, np.asarray(rows, dtype=np.int64)) for index, rows in parts]
        for index, rows in self.parts:
            if index.ntotal != len(rows):
                raise ValueError(f"a FAISS index of {index.ntotal} vectors for {len(rows)} rows")
        self._live = [rows >= 0 for _, rows in self.parts]
        self.ntotal = int(sum(live.sum() for live in self._live))

    def search(
        self,
        query_vectors: np.ndarray,
        k: int,
        allowed_rows: np.ndarray | None = None,
        *,
        ef_search: int = DEFAULT_EF_SEARCH,
        nprobe: int = 16,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` catalogue rows and inner products per query, as ``search_index``."""
        import faiss

        query_vectors = np.ascontiguousarray(query_vectors, dtype=np.float32)
        n = len(query_vectors)
        allowed = None
        if allowed_rows is not None:
            allowed = np.zeros(self.ntotal, dtype=bool)
            allowed[np.asarray(allowed_rows, dtype=np.int64)] = True
        all_rows, all_scores = [], []
        for (index, rows), live in zip(self.parts, self._live):
            wanted = live if allowed is None else live & allowed[np.maximum(rows, 0)]
            if not wanted.any():
                continue
            bitmap = np.packbits(wanted, bitorder="little")
            selector = (
                None
                if wanted.all()
                else faiss.IDSelectorBitmap(len(wanted), faiss.swig_ptr(bitmap))
            )
            k_part = min(k, index.ntotal)
            params = _search_parameters(index, None, ef_search, nprobe, selector)
            scores, local = index.search(query_vectors, k_part, params=params)
            found = local >= 0
            all_rows.append(np.where(found, rows[np.maximum(local, 0)], -1))
            all_scores.append(np.where(found, scores, -np.inf).astype(np.float32))
        out_rows = np.full((n, k), -1, dtype=np.int64)
        out_scores = np.full((n, k), -np.inf, dtype=np.float32)
        if not all_rows:
            return out_rows, out_scores
        rows_cat = np.concatenate(all_rows, axis=1)
        scores_cat = np.concatenate(all_scores, axis=1)
        for q in range(n):
            keep = rows_cat[q] >= 0
            r, s = rows_cat[q][keep], scores_cat[q][keep]
            order = np.lexsort((r, -s))[:k]
            out_rows[q, : len(order)] = r[order]
            out_scores[q, : len(order)] = s[order]
        return out_rows, out_scores
