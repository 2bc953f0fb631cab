"""Dense (bi-encoder) search over a FAISS inner-product index of L2-normalised vectors.

The FAISS index type is configuration: a factory string recorded in the index manifest.
Ids stored in FAISS are catalogue row numbers; the id map (row -> product id) lives beside it.
"""

from __future__ import annotations

from typing import Any

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


def _search_parameters(
    index: Any, allowed_rows: np.ndarray | None, ef_search: int, nprobe: int
) -> Any:
    import faiss

    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    selector = (
        faiss.IDSelectorBatch(np.asarray(allowed_rows, dtype=np.int64))
        if allowed_rows is not None
        else None
    )
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
