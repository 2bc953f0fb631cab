"""The two first-stage retrievers, BM25 and dense, behind the ``Retriever`` interface.

Both address products by catalogue row (row i = BM25 document i = FAISS id i) and return
product ids; both apply filters inside their top-k (BM25 masks rows, FAISS gets an ID
selector), so a filtered query still returns ``k`` products when ``k`` qualify.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from shopsearch.errors import SearchError
from shopsearch.retrieval.analysis import Analyzer
from shopsearch.retrieval.base import Encoder, Timings
from shopsearch.retrieval.bm25 import BM25Index, backoff_terms
from shopsearch.retrieval.dense import search_index
from shopsearch.retrieval.filters import FilterIndex, Filters
from shopsearch.retrieval.spelling import Correction, SpellingCorrector
from shopsearch.retrieval.timing import timed
from shopsearch.retrieval.types import Hit, sort_hits


class BM25Retriever:
    """BM25 over the index's analysed catalogue; each hit's score is its BM25 score.

    With a ``speller`` (``retrieval.spelling``), query terms the catalogue does not know are
    searched together with their correction (the original term kept)."""

    name = "bm25"

    def __init__(
        self,
        bm25: BM25Index,
        analyzer: Analyzer,
        product_ids: Sequence[str],
        filter_index: FilterIndex,
    ) -> None:
        self.bm25 = bm25
        self.analyzer = analyzer
        self.product_ids = list(product_ids)
        self.filter_index = filter_index
        self.speller: SpellingCorrector | None = None

    def analyse(self, query: str) -> list[str]:
        """The query's BM25 terms, with unknown Chinese words backed off to known pieces (and,
        with a speller, unknown words followed by their correction)."""
        terms = self.analyzer.tokenize(query)
        if self.speller is not None:
            terms = self.speller.correct(terms)[0]
        return backoff_terms(terms, self.bm25.vocabulary)

    def corrections(self, query: str) -> list[Correction]:
        """The spelling corrections ``analyse`` makes to ``query`` ("did you mean")."""
        if self.speller is None:
            return []
        return self.speller.correct(self.analyzer.tokenize(query))[1]

    def search(
        self,
        queries: Sequence[str],
        k: int = 10,
        filters: Filters | None = None,
        *,
        timings: Timings | None = None,
    ) -> list[list[Hit]]:
        with timed(timings, "filters"):
            allowed = self.filter_index.mask(filters)
        results = []
        for query in queries:
            with timed(timings, "analysis"):
                terms = self.analyse(query)
            with timed(timings, "bm25"):
                rows, scores = self.bm25.top_k(terms, k, allowed)
                results.append(
                    [
                        Hit(self.product_ids[r], float(s), {"bm25": float(s)})
                        for r, s in zip(rows, scores)
                    ]
                )
        return results


def encode_each(encoder: Encoder, queries: Sequence[str]) -> np.ndarray:
    """Query vectors ``(len(queries), dim)``, one query per forward pass, as a shopper's query
    is encoded: in a padded batch the same query's vector differs in the last bits, enough to
    swap near-ties between a benchmark's run and the served page."""
    if not len(queries):
        return np.zeros((0, encoder.dim), dtype=np.float32)
    return np.concatenate([encoder.encode_queries([q]) for q in queries])


class DenseRetriever:
    """Query tower + FAISS inner product; each hit's score is its cosine similarity."""

    name = "dense"

    def __init__(
        self,
        encoder: Encoder,
        faiss_index: Any,
        product_ids: Sequence[str],
        filter_index: FilterIndex,
    ) -> None:
        if faiss_index.ntotal != len(product_ids):
            raise SearchError(
                f"the FAISS index holds {faiss_index.ntotal} vectors for "
                f"{len(product_ids)} products; rebuild the index"
            )
        self.encoder = encoder
        self.faiss_index = faiss_index
        self.product_ids = list(product_ids)
        self.filter_index = filter_index

    def search(
        self,
        queries: Sequence[str],
        k: int = 10,
        filters: Filters | None = None,
        *,
        timings: Timings | None = None,
    ) -> list[list[Hit]]:
        with timed(timings, "encode_query"):
            vectors = encode_each(self.encoder, queries)
        return self.search_vectors(vectors, k, filters, timings=timings)

    def search_vectors(
        self,
        vectors: np.ndarray,
        k: int,
        filters: Filters | None = None,
        *,
        timings: Timings | None = None,
    ) -> list[list[Hit]]:
        """Search with query vectors already encoded, shape ``(n_queries, dim)``."""
        with timed(timings, "filters"):
            allowed = self.filter_index.mask(filters)
        with timed(timings, "dense_search"):
            allowed_rows = np.flatnonzero(allowed) if allowed is not None else None
            rows, scores = search_index(self.faiss_index, vectors, k, allowed_rows)
            # FAISS returns equal scores in heap order; the engine's order breaks ties by id.
            return [
                sort_hits(
                    [
                        Hit(self.product_ids[r], float(s), {"dense": float(s)})
                        for r, s in zip(row, score)
                        if r >= 0
                    ]
                )
                for row, score in zip(rows, scores)
            ]
