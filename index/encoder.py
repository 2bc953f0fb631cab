"""Loading the encoder an index was built with, refusing one that would not match its vectors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from shopsearch.errors import IndexLoadError
from shopsearch.index.manifest import Manifest
from shopsearch.index.store import SearchIndex
from shopsearch.retrieval.base import Encoder


@dataclass(frozen=True)
class IndexHead:
    """An index's folder and manifest: all that choosing its encoder needs (an update loads
    the encoder without loading the index)."""

    path: Path
    manifest: Manifest


def load_index_encoder(
    index: SearchIndex | IndexHead,
    identity: Callable[[str], dict[str, Any]] | None = None,
    loader: Callable[..., Encoder] | None = None,
    runtime: str | None = None,
) -> Encoder:
    """The index's encoder. Refuses a model whose weights changed since the build (revision,
    a hash of the weights) or whose vectors have another dimension: either would silently
    compare query vectors with product vectors from a different model.

    ``identity`` and ``loader`` default to the model registry's and sentence-transformers';
    tests pass their own. ``runtime`` (``models.runtime.ENCODER_RUNTIMES``) overrides the
    one the manifest records.
    """
    if identity is None:
        from shopsearch.models.registry import model_identity

        identity = model_identity
    if loader is None:
        from shopsearch.retrieval.encoders import SentenceTransformerEncoder

        loader = SentenceTransformerEncoder

    recorded = index.manifest.encoder or {}
    name = recorded.get("name") or recorded.get("path")
    if not name:
        raise IndexLoadError(f"index {index.path} has no dense part (it was built without a model)")
    current = identity(name)
    if recorded.get("revision") and current.get("revision") != recorded.get("revision"):
        raise IndexLoadError(
            f"index {index.path} was built with model {name!r} revision "
            f"{recorded.get('revision')}, but that model now resolves to revision "
            f"{current.get('revision')}; rebuild the index with `search-cli build-index`"
        )
    # The runtime only changes how the forward pass runs (fp32 either way), so serving may
    # pick another one than the build used; the vectors stay comparable.
    chosen = runtime or recorded.get("runtime") or "torch"
    options: dict[str, Any] = {} if chosen == "torch" else {"runtime": chosen}
    encoder = loader(name, max_length=recorded.get("max_length", 128), **options)
    if encoder.dim != recorded.get("dim"):
        raise IndexLoadError(
            f"index {index.path} holds {recorded.get('dim')}-d vectors but "
            f"model {name!r} makes {encoder.dim}-d ones; rebuild the index"
        )
    return encoder
