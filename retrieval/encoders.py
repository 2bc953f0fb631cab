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
        self,
        model: str,
        *,
        device: str = "cpu",
        max_length: int = DEFAULT_MAX_LENGTH,
        runtime: str = "torch",
    ) -> None:
        from shopsearch.models.registry import load_bi_encoder, model_identity

        self.name = model
        self.runtime = runtime
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
        self._exported = None if runtime == "torch" else self._load_exported(runtime)

    def _load_exported(self, runtime: str) -> Any:
        """The transformer's forward pass on a fast runtime, exported once per model revision
        into the cache (fp32 only: see ``models.runtime.ENCODER_RUNTIMES``)."""
        from shopsearch.errors import ModelError
        from shopsearch.models.registry import cache_dir, resolve_model
        from shopsearch.models.runtime import ENCODER_RUNTIMES, compile_runtime, runtime_spec

        if runtime not in ENCODER_RUNTIMES:
            raise ModelError(
                f"encoder runtime {runtime!r} is not one of {', '.join(ENCODER_RUNTIMES)} (an "
                f"int8 query tower would no longer match the fp32 product vectors)"
            )
        if self.pooling not in ("mean", "cls"):
            raise ModelError(f"runtime {runtime} supports mean or cls pooling, not {self.pooling}")
        folder = resolve_model(self.name).path
        if folder is None:
            raise ModelError(
                f"runtime {runtime} needs a local model folder, not hub id {self.name}"
            )
        target = (
            cache_dir()
            / "runtime"
            / f"{self.identity['revision']}-{runtime}"
            / (runtime_spec(runtime).file_name)
        )
        if not target.is_file():
            _export_atomically(folder, runtime, target)
        return compile_runtime(target, runtime)

    @property
    def pooling(self) -> str:
        return next(
            (
                str(getattr(m, "pooling_mode", None) or m.get_pooling_mode_str())
                for m in self._model
                if hasattr(m, "pooling_mode") or hasattr(m, "get_pooling_mode_str")
            ),
            "unknown",
        )

    def _encode_exported(self, texts: Sequence[str], prompt: str, batch_size: int) -> np.ndarray:
        from shopsearch.models.runtime import tokenizer_feeds

        model = self._exported
        assert model is not None
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        tokenizer = self._model.tokenizer
        for start in range(0, len(texts), batch_size):
            batch = [prompt + t for t in texts[start : start + batch_size]]
            encoded = tokenizer(
                batch,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="np",
            )
            hidden = model(tokenizer_feeds(encoded, model.input_names))
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = encoded["attention_mask"][..., None].astype(np.float32)
                pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            out[start : start + len(batch)] = pooled / np.maximum(norms, 1e-12)
        return out

    def _encode(
        self, texts: Sequence[str], prompt: str, batch_size: int, show_progress: bool
    ) -> np.ndarray:
        import torch

        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._exported is not None:
            if not show_progress:
                return self._encode_exported(texts, prompt, batch_size)
            from tqdm.auto import tqdm

            chunks = range(0, len(texts), batch_size * 16)
            return np.concatenate(
                [
                    self._encode_exported(texts[i : i + batch_size * 16], prompt, batch_size)
                    for i in tqdm(chunks, desc=f"encoding ({self.runtime})", unit="chunk")
                ]
            )
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
        pooling = self.pooling
        return {
            **self.identity,
            "dim": self.dim,
            "pooling": pooling,
            "normalized": True,
            "max_length": self.max_length,
            "query_prompt": self.query_prompt,
            "document_prompt": self.document_prompt,
            "runtime": self.runtime,
        }


def _export_atomically(folder: str, runtime: str, target: Any) -> None:
    """Export into a temporary sibling folder, then rename: a killed export leaves nothing
    that a later load would take for a model."""
    import shutil
    import tempfile
    from pathlib import Path

    from shopsearch.models.runtime import export_model

    target = Path(target)
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent.parent))
    try:
        export_model(folder, runtime, tmp, "encoder")
        try:
            tmp.rename(target.parent)
        except OSError:  # another process exported it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
