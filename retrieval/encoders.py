"""Bi-encoder towers behind the small ``Encoder`` interface (see ``retrieval.base``)."""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)

# Product titles and shopper queries are short; 128 pieces keeps a long description from
# dominating build time while a 10,000-character query is simply truncated.
DEFAULT_MAX_LENGTH = 128


class SentenceTransformerEncoder:
    """Two towers over one sentence-transformers model (shared weights, DPR-style).

    The query tower applies the model's "query" prompt and the product tower its "document"
    prompt (``query: `` / ``passage: `` for e5; none for MiniLM). Output vectors are float32,
    shape ``(n, dim)``, L2-normalised, so FAISS inner product is cosine similarity.
    """

    def __init__(
        self, model: str, *, device: str = "cpu", max_length: int = DEFAULT_MAX_LENGTH
    ) -> None:
        from shopsearch.models.registry import load_bi_encoder, model_identity

        self.name = model
        self.identity: dict[str, Any] = model_identity(model)
        self._model = load_bi_encoder(model, device=device)
        self._model.max_seq_length = min(max_length, self._model.max_seq_length or max_length)
        self.max_length = self._model.max_seq_length
        get_dim = (
            getattr(self._model, "get_embedding_dimension", None)
            or self._model.get_sentence_embedding_dimension
        )  # sentence-transformers < 6
        self.dim = int(get_dim())
        prompts = getattr(self._model, "prompts", {}) or {}
        self.query_prompt = prompts.get("query", "")
        self.document_prompt = prompts.get("document", "")

    def _encode(
        self, texts: Sequence[str], prompt: str, batch_size: int, show_progress: bool
    ) -> np.ndarray:
        import torch

        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            vectors = self._model.encode(
                list(texts),
                prompt=prompt,
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=show_progress,
            )
        return np.asarray(vectors, dtype=np.float32)

    def encode_queries(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        return self._encode(texts, self.query_prompt, batch_size, False)

    def encode_documents(
        self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        return self._encode(texts, self.document_prompt, batch_size, show_progress)

    def describe(self) -> dict[str, Any]:
        """What the index manifest records about the encoder."""
        pooling = next(
            (
                str(getattr(m, "pooling_mode", None) or m.get_pooling_mode_str())
                for m in self._model
                if hasattr(m, "pooling_mode") or hasattr(m, "get_pooling_mode_str")
            ),
            "unknown",
        )
        return {
            **self.identity,
            "dim": self.dim,
            "pooling": pooling,
            "normalized": True,
            "max_length": self.max_length,
            "query_prompt": self.query_prompt,
            "document_prompt": self.document_prompt,
        }
