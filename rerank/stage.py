"""The rerank stage: a first-stage retriever's candidates re-scored by a reranker.

It is a ``Retriever`` like the others, so ``query``, ``benchmark``, the tuners and the server
all run the same code: the first stage's candidates (a fixed number of them, whatever ``k``),
the top ``blend.top`` scored by the reranker, ordered by ``rerank.blend.rerank_order``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from shopsearch.rerank.blend import BlendConfig, rerank_order
from shopsearch.retrieval.base import Reranker, Retriever, Timings
from shopsearch.retrieval.filters import Filters
from shopsearch.retrieval.timing import timed
from shopsearch.retrieval.types import Hit


class RerankedRetriever:
    """``first_stage`` candidates, the top ``blend.top`` reranked by ``reranker``."""

    name = "rerank"

    def __init__(
        self,
        first_stage: Retriever,
        reranker: Reranker,
        product_texts: Mapping[str, str],
        blend: BlendConfig = BlendConfig(),
    ) -> None:
        self.first_stage = first_stage
        self.reranker = reranker
        self.product_texts = product_texts
        self.blend = blend

    def search(
        self,
        queries: Sequence[str],
        k: int = 10,
        filters: Filters | None = None,
        *,
        timings: Timings | None = None,
    ) -> list[list[Hit]]:
        candidates = self.first_stage.search(
            queries, max(k, self.blend.top), filters, timings=timings
        )
        results = []
        for query, hits in zip(queries, candidates):
            with timed(timings, "rerank"):
                head = hits[: self.blend.top]
                logits = self.reranker.logits(
                    query, [self.product_texts[h.product_id] for h in head]
                )
                probabilities = self.reranker.probabilities(logits)
                results.append(rerank_order(hits, logits, probabilities, self.blend)[:k])
        return results
