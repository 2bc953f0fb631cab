"""The hybrid retriever: two retrievers and a fusion function, composed.

Each retriever is asked for the same fixed number of candidates, ``depth``, whatever ``k``
the caller wants, and the fused list is cut to ``k`` afterwards. That is what makes a
benchmark's run (k = 1000) and a shopper's page (k = 10) the same ranking: min-max and z-score
fusion normalise over the candidates, so fusing deeper lists would change the order. A query
can therefore get at most ``2 * depth`` products from this stage.
"""

from __future__ import annotations

from typing import Sequence

from shopsearch.retrieval.base import Retriever, Timings
from shopsearch.retrieval.filters import Filters
from shopsearch.retrieval.fusion import FusionConfig, fuse
from shopsearch.retrieval.timing import timed
from shopsearch.retrieval.types import Hit

DEFAULT_DEPTH = 100


class HybridRetriever:
    """BM25 and dense candidates, ``depth`` of each, fused by ``fusion``.

    Without a dense retriever (a BM25-only index) the BM25 list is the fused list, its score
    also recorded as "fused", so every later stage sees the same fields either way.
    """

    name = "hybrid"

    def __init__(
        self,
        sparse: Retriever,
        dense: Retriever | None,
        fusion: FusionConfig,
        depth: int = DEFAULT_DEPTH,
    ) -> None:
        if depth < 1:
            raise ValueError(f"candidate depth must be >= 1, got {depth}")
        self.sparse = sparse
        self.dense = dense
        self.fusion = fusion
        self.depth = depth

    def search(
        self,
        queries: Sequence[str],
        k: int = 10,
        filters: Filters | None = None,
        *,
        timings: Timings | None = None,
    ) -> list[list[Hit]]:
        sparse = self.sparse.search(queries, self.depth, filters, timings=timings)
        if self.dense is None:
            return [
                [Hit(h.product_id, h.score, {**h.scores, "fused": h.score}) for h in hits[:k]]
                for hits in sparse
            ]
        dense = self.dense.search(queries, self.depth, filters, timings=timings)
        with timed(timings, "fusion"):
            return [fuse(s, d, self.fusion)[:k] for s, d in zip(sparse, dense)]
