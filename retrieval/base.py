"""The small interfaces every stage implements.

Conventions shared by all of them: results sort by ``(-score, product_id)``; a stage's
``score`` is the key it sorts by (BM25 score, cosine, fused score, or the reranker's blend
key) and every stage's own number stays in ``Hit.scores`` under its name ("bm25", "dense",
"fused", "click_logit", "click_probability"). ``timings``, when given, collects milliseconds
per step name, summed over the batch, so one code path serves a shopper's query (timed, for
``--explain``) and a benchmark's batch (untimed).
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from shopsearch.retrieval.filters import Filters
from shopsearch.retrieval.types import Hit

#: Milliseconds spent per named step ("analysis", "bm25", "encode_query", ...).
Timings = dict[str, float]


@runtime_checkable
class Encoder(Protocol):
    """A two-tower text encoder. Both towers return float32 arrays of shape ``(n, dim)``,
    L2-normalised so that inner product equals cosine similarity."""

    name: str
    dim: int

    def encode_queries(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray: ...

    def encode_documents(
        self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray: ...


@runtime_checkable
class Retriever(Protocol):
    """Answers a batch of queries with at most ``k`` hits each, sorted by ``(-score, id)``,
    restricted to the products ``filters`` allow."""

    def search(
        self,
        queries: Sequence[str],
        k: int = 10,
        filters: Filters | None = None,
        *,
        timings: Timings | None = None,
    ) -> list[list[Hit]]: ...


@runtime_checkable
class Reranker(Protocol):
    """Scores (query, product text) pairs with one logit each and turns logits into click
    probabilities with its calibrator (a plain sigmoid when it has none).

    Logits are what a blend with the fused score needs; probabilities are what a shopper is
    shown. ``max_length`` is the pair length (in tokens) the model scores, the one it was
    trained with; ``calibrated`` says whether ``probabilities`` uses a fitted calibrator.
    """

    @property
    def name(self) -> str: ...

    @property
    def calibrated(self) -> bool: ...

    @property
    def max_length(self) -> int: ...

    def logits(self, query: str, texts: Sequence[str]) -> np.ndarray: ...

    def probabilities(self, logits: np.ndarray) -> np.ndarray: ...
