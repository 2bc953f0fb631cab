"""Shared fixtures: the dozen-product bilingual catalogue and a fake keyword encoder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

# No test may reach a model hub, and model caches go to a throwaway folder.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

FIXTURES = Path(__file__).parent / "fixtures"
CATALOG = FIXTURES / "catalog.jsonl"

# Each dimension is a concept; Chinese and English words for it share the dimension, which is
# what a real bilingual encoder learns and what makes dense recall differ from BM25 here.
_CONCEPTS = [
    ("dress", "连衣裙", "裙"),
    ("summer", "夏季", "夏"),
    ("winter", "秋冬", "冬"),
    ("bed", "床"),
    ("king",),
    ("queen",),
    ("wood", "实木", "木"),
    ("duvet",),
    ("phone", "iphone15", "手机"),
    ("drill",),
    ("pan", "锅"),
    ("dog",),
    ("cotton", "棉"),
    ("women", "女"),
    ("linen",),
    ("t恤", "tee"),
]


class KeywordEncoder:
    """A deterministic stand-in for a bi-encoder: bag of concepts, L2-normalised."""

    name = "fake-keyword"
    dim = len(_CONCEPTS) + 1

    def _vector(self, text: str) -> np.ndarray:
        text = text.lower()
        v = np.zeros(self.dim, dtype=np.float32)
        for i, words in enumerate(_CONCEPTS):
            v[i] = sum(text.count(w) for w in words)
        v[-1] = 0.01  # keeps every vector non-zero
        return v / np.linalg.norm(v)

    def encode_queries(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        return (
            np.stack([self._vector(t) for t in texts])
            if texts
            else np.zeros((0, self.dim), np.float32)
        )

    def encode_documents(
        self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        return self.encode_queries(texts)

    def describe(self) -> dict:
        return {"name": self.name, "dim": self.dim, "revision": "test"}


@pytest.fixture
def keyword_encoder() -> KeywordEncoder:
    return KeywordEncoder()


@pytest.fixture(scope="session")
def catalog_path() -> Path:
    return CATALOG


@pytest.fixture
def products():
    from shopsearch.index.catalog import read_catalog

    return read_catalog(CATALOG)


@pytest.fixture
def built_index(tmp_path, products, keyword_encoder):
    from shopsearch.index.store import build_index

    target = tmp_path / "idx"
    build_index(products, target, encoder=keyword_encoder)
    return target


@pytest.fixture
def engine(built_index, keyword_encoder):
    from shopsearch.engine import SearchEngine
    from shopsearch.index.store import load_index

    return SearchEngine(load_index(built_index), encoder=keyword_encoder, depth=20)


@pytest.fixture
def keyword_models(monkeypatch):
    """Let ``SearchEngine.open`` (and so the CLI) load an index built with the fake keyword
    encoder, through the real manifest checks: only the model loader is replaced."""
    from shopsearch.index import encoder as index_encoder

    real = index_encoder.load_index_encoder

    def load(index, identity=None, loader=None, runtime=None):
        if (index.manifest.encoder or {}).get("name") != KeywordEncoder.name:
            return real(index, identity, loader, runtime)
        return real(
            index,
            identity=lambda name: {"name": name, "revision": "test"},
            loader=lambda name, max_length=128, runtime="torch": KeywordEncoder(),
            runtime=runtime,
        )

    monkeypatch.setattr(index_encoder, "load_index_encoder", load)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv(
        "SHOPSEARCH_CACHE",
        os.environ.get(
            "SHOPSEARCH_TEST_CACHE", str(tmp_path_factory.getbasetemp() / "shopsearch-cache")
        ),
    )


@pytest.fixture(scope="session")
def cross_encoder_dir(tmp_path_factory):
    """A MiniLM cross-encoder with a seeded head, saved as a reranker folder would be."""
    import json

    import torch

    from shopsearch.models.registry import load_cross_encoder

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ce") / "reranker"
    load_cross_encoder("minilm", max_length=32).save(str(folder))
    (folder / "training.json").write_text(json.dumps({"config": {"max_length": 32}}))
    (folder / "calibration.json").write_text(
        json.dumps({"type": "platt", "a": 3.0, "b": -0.5}) + "\n"
    )
    return folder
