"""The small interfaces every stage implements."""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from shopsearch.retrieval.types import Hit


@runtime_checkable
class Encoder(Protocol):
    """A two-tower text encoder. Both towers return float32 arrays of shape ``(n, dim)``,
    L2-normalised so that inner product equals cosine similarity."""

    name: str
    dim: int

    def encode_queries(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray: ...

    def encode_documents(self, texts: Sequence[str], batch_size: int = 64,
                         show_progress: bool = False) -> np.ndarray: ...


@runtime_checkable
class Retriever(Protocol):
    """Answers a batch of queries with the top ``k`` hits each, sorted by ``(-score, id)``."""

    def search(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]: ...


@runtime_checkable
class Reranker(Protocol):
    """Re-scores a query's hits. Returned scores are probabilities in [0, 1]."""

    def rerank(self, query: str, hits: list[Hit], texts: Sequence[str]) -> list[Hit]: ...
