"""The search engine: BM25 and dense recall, fusion, filters and cross-encoder rerank over a
loaded index. The CLI and the benchmark runner are thin shells over this module."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from shopsearch.errors import IndexLoadError, SearchError
from shopsearch.index.store import SearchIndex, load_index
from shopsearch.rerank.blend import BlendConfig, append_below, blend_order
from shopsearch.retrieval.base import Encoder, Reranker
from shopsearch.retrieval.bm25 import backoff_terms
from shopsearch.retrieval.dense import search_index
from shopsearch.retrieval.fusion import FusionConfig, fuse
from shopsearch.retrieval.types import Hit, Product

logger = logging.getLogger(__name__)

DEFAULT_DEPTH = 100
DEFAULT_RERANK_TOP = 50
STAGES = ("bm25", "dense", "hybrid", "rerank")


@dataclass(frozen=True)
class Filters:
    """Category (case-insensitive, whole category or one ``>``/``/`` level of it) and an
    inclusive price range. Products without a price fail any price filter."""

    category: str | None = None
    min_price: float | None = None
    max_price: float | None = None

    def __post_init__(self) -> None:
        if (self.min_price is not None and self.max_price is not None
                and self.min_price > self.max_price):
            raise SearchError(f"--min-price {self.min_price} is above --max-price "
                              f"{self.max_price}")

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.category, self.min_price, self.max_price))

    def allowed_rows(self, products: Sequence[Product]) -> np.ndarray | None:
        """Boolean mask over catalogue rows, or None when nothing is filtered."""
        if not self.active:
            return None
        wanted = self.category.strip().casefold() if self.category else None
        mask = np.ones(len(products), dtype=bool)
        for row, product in enumerate(products):
            if wanted is not None:
                full = product.category.casefold()
                levels = {part.strip() for part in full.replace("/", ">").split(">")}
                if wanted != full and wanted not in levels:
                    mask[row] = False
                    continue
            if self.min_price is not None or self.max_price is not None:
                price = product.price
                if price is None or (self.min_price is not None and price < self.min_price) or (
                        self.max_price is not None and price > self.max_price):
                    mask[row] = False
        return mask


@dataclass
class SearchResult:
    query: str
    hits: list[Hit]
    products: dict[str, Product]
    query_terms: list[str]
    timings_ms: dict[str, float] = field(default_factory=dict)
    matched_terms: dict[str, list[str]] = field(default_factory=dict)
    reranked: bool = False
    calibrated: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        results = []
        for rank, hit in enumerate(self.hits, start=1):
            product = self.products[hit.product_id]
            entry = {"rank": rank, "id": hit.product_id, "title": product.title,
                     "price": product.price, "category": product.category,
                     "score": hit.score,
                     **{name: value for name, value in hit.scores.items()}}
            if hit.product_id in self.matched_terms:
                entry["matched_terms"] = self.matched_terms[hit.product_id]
            results.append(entry)
        return {"query": self.query, "query_terms": self.query_terms, "reranked": self.reranked,
                "calibrated": self.calibrated, "notes": self.notes,
                "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
                "results": results}


def _check_query(query: str) -> str:
    if not isinstance(query, str) or not query.strip():
        raise SearchError("the query is empty; type some words to search for")
    return query


class SearchEngine:
    """Hybrid product search over one index.

    ``depth`` candidates come from each retriever (after filters), are fused, and the top
    ``rerank_top`` fused candidates are re-scored by the reranker when one is present.
    """

    def __init__(self, index: SearchIndex, *, encoder: Encoder | None = None,
                 reranker: Reranker | None = None, depth: int = DEFAULT_DEPTH,
                 rerank_top: int = DEFAULT_RERANK_TOP, fusion: FusionConfig | None = None,
                 rerank_weight: float = 1.0) -> None:
        if depth < 1 or rerank_top < 0:
            raise SearchError("depth must be >= 1 and rerank_top >= 0")
        if not 0.0 <= rerank_weight <= 1.0:
            raise SearchError("rerank_weight must be in [0, 1]")
        self.rerank_weight = rerank_weight
        self.index = index
        self.encoder = encoder
        self.reranker = reranker
        self.depth = depth
        self.rerank_top = rerank_top
        self.fusion = fusion or FusionConfig.from_dict(index.manifest.fusion)
        self._texts = [p.text() for p in index.products]
        self._ids = [p.id for p in index.products]
        self._row_of = {pid: row for row, pid in enumerate(self._ids)}

    @classmethod
    def open(cls, path: str | Path, *, reranker: str | None = None, use_reranker: bool = True,
             load_encoder: bool = True, **kwargs: Any) -> "SearchEngine":
        """Load an index with the encoder it was built with and its reranker, if any."""
        index = load_index(path)
        # jieba loads its dictionary on first use (~0.5 s); do it now so that per-query
        # timings measure the query, not the warm-up.
        index.analyzer.tokenize("预热 warm-up")
        encoder = None
        if load_encoder and index.manifest.encoder is not None:
            encoder = load_manifest_encoder(index)
            # The first forward pass and the first FAISS search pay one-off set-up costs
            # (hundreds of ms); pay them here rather than in the first query's timings.
            search_index(index.faiss_index, encoder.encode_queries(["warm-up"]), 1)
        rerank_model = None
        if use_reranker:
            source = reranker or index.reranker_path
            if source is not None:
                from shopsearch.rerank.cross_encoder import CrossEncoderReranker

                rerank_model = CrossEncoderReranker(source)
            stored = (index.manifest.reranker or {}).get("blend")
            if reranker is None and rerank_model is not None and stored:
                # The installed reranker's tuned blend (``search-cli tune-rerank``).
                blend = BlendConfig.from_dict(stored)
                kwargs.setdefault("rerank_weight", blend.weight)
                kwargs.setdefault("rerank_top", blend.top)
        return cls(index, encoder=encoder, reranker=rerank_model, **kwargs)

    # -- stages ---------------------------------------------------------------------------
    def analyse(self, query: str) -> list[str]:
        return backoff_terms(self.index.analyzer.tokenize(query), self.index.bm25.vocabulary)

    def bm25_search(self, queries: Sequence[str], k: int,
                    allowed: np.ndarray | None = None) -> list[list[Hit]]:
        results = []
        for query in queries:
            rows, scores = self.index.bm25.top_k(self.analyse(query), k, allowed)
            results.append([Hit(self._ids[r], float(s), {"bm25": float(s)})
                            for r, s in zip(rows, scores)])
        return results

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        if self.encoder is None:
            raise SearchError("this index has no dense part (it was built without a model)")
        return self.encoder.encode_queries(list(queries))

    def dense_search(self, queries: Sequence[str], k: int, allowed: np.ndarray | None = None,
                     vectors: np.ndarray | None = None) -> list[list[Hit]]:
        if vectors is None:
            vectors = self.encode_queries(queries)
        allowed_rows = np.flatnonzero(allowed) if allowed is not None else None
        rows, scores = search_index(self.index.faiss_index, vectors, k, allowed_rows)
        return [[Hit(self._ids[r], float(s), {"dense": float(s)})
                 for r, s in zip(row, score) if r >= 0] for row, score in zip(rows, scores)]

    def hybrid_search(self, queries: Sequence[str], k: int,
                      allowed: np.ndarray | None = None) -> list[list[Hit]]:
        sparse = self.bm25_search(queries, max(k, self.depth), allowed)
        if self.encoder is None:
            return [hits[:k] for hits in sparse]
        dense = self.dense_search(queries, max(k, self.depth), allowed)
        return [fuse(s, d, self.fusion)[:k] for s, d in zip(sparse, dense)]

    def rerank_hits(self, query: str, hits: list[Hit]) -> list[Hit]:
        """Rerank the top ``rerank_top`` hits; with ``rerank_weight`` < 1 their order blends
        the click logit with the fused score (``rerank.blend``)."""
        if self.reranker is None or self.rerank_top == 0 or not hits:
            return hits
        head, tail = hits[:self.rerank_top], hits[self.rerank_top:]
        texts = [self.product_text(h.product_id) for h in head]
        reranked = self.reranker.rerank(query, head, texts)
        fused = {h.product_id: h.score for h in head}
        reranked = blend_order(reranked,
                               np.array([h.scores.get("click_logit", h.score) for h in reranked]),
                               np.array([fused[h.product_id] for h in reranked]),
                               self.rerank_weight)
        # Products below the rerank cut keep their fused order but score below every reranked one.
        return append_below(reranked, tail)

    def _row(self, product_id: str) -> int:
        return self._row_of[product_id]

    def product_text(self, product_id: str) -> str:
        """The text the reranker reads for a product."""
        return self._texts[self._row(product_id)]

    # -- the full pipeline ----------------------------------------------------------------
    def search(self, query: str, k: int = 10, filters: Filters | None = None,
               explain: bool = False) -> SearchResult:
        """Run every stage for one query and return the top ``k`` products."""
        _check_query(query)
        if k < 1:
            raise SearchError("k must be at least 1")
        timings: dict[str, float] = {}
        clock = time.perf_counter
        t_start = clock()
        allowed = (filters or Filters()).allowed_rows(self.index.products)
        timings["filters"] = (clock() - t_start) * 1000

        t0 = clock()
        terms = self.analyse(query)
        timings["analysis"] = (clock() - t0) * 1000
        t0 = clock()
        depth = max(k, self.depth)
        rows, scores = self.index.bm25.top_k(terms, depth, allowed)
        sparse = [Hit(self._ids[r], float(s), {"bm25": float(s)}) for r, s in zip(rows, scores)]
        timings["bm25"] = (clock() - t0) * 1000

        notes: list[str] = []
        if self.encoder is not None:
            t0 = clock()
            vectors = self.encode_queries([query])
            timings["encode_query"] = (clock() - t0) * 1000
            t0 = clock()
            dense = self.dense_search([query], depth, allowed, vectors=vectors)[0]
            timings["dense_search"] = (clock() - t0) * 1000
            t0 = clock()
            hits = fuse(sparse, dense, self.fusion)
            timings["fusion"] = (clock() - t0) * 1000
        else:
            hits = [Hit(h.product_id, h.score, {**h.scores, "fused": h.score}) for h in sparse]
            notes.append("no dense part in this index: results are BM25 only")

        reranked = calibrated = False
        if self.reranker is not None and hits:
            t0 = clock()
            hits = self.rerank_hits(query, hits)
            timings["rerank"] = (clock() - t0) * 1000
            reranked = True
            calibrated = bool(getattr(self.reranker, "calibrated", False))
            if not calibrated:
                notes.append("reranker has no calibration.json: click probabilities are a "
                             "plain sigmoid of its logits")
        else:
            notes.append("results are not reranked: this index has no fine-tuned reranker "
                         "(train one with `search-cli train-reranker` or pass --reranker)")
        hits = hits[:k]
        timings["total"] = (clock() - t_start) * 1000
        if filters is not None and filters.active and len(hits) < k:
            notes.append(f"only {len(hits)} products match the filters")
        matched: dict[str, list[str]] = {}
        if explain:
            query_terms = set(terms)
            for hit in hits:
                product_terms = set(self.index.analyzer.tokenize(
                    self._texts[self._row(hit.product_id)]))
                matched[hit.product_id] = sorted(query_terms & product_terms)
        products = {h.product_id: self.index.products[self._row(h.product_id)] for h in hits}
        return SearchResult(query=query, hits=hits, products=products, query_terms=terms,
                            timings_ms=timings, matched_terms=matched, reranked=reranked,
                            calibrated=calibrated, notes=notes)

    def stage(self, name: str) -> "StageRetriever":
        """A ``Retriever`` for one stage of this engine, for benchmarks."""
        if name not in STAGES:
            raise SearchError(f"unknown stage {name!r}; choose from {', '.join(STAGES)}")
        if name == "dense" and self.encoder is None:
            raise SearchError("this index has no dense part, so it has no 'dense' stage")
        if name == "rerank" and self.reranker is None:
            raise SearchError("no reranker: the index has none and none was given")
        return StageRetriever(self, name)


class StageRetriever:
    """Adapts one stage of a ``SearchEngine`` to ``search(queries, k)``."""

    def __init__(self, engine: SearchEngine, stage: str) -> None:
        self.engine = engine
        self.stage = stage

    def search(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        engine = self.engine
        if self.stage == "bm25":
            return engine.bm25_search(queries, k)
        if self.stage == "dense":
            return engine.dense_search(queries, k)
        hybrid = engine.hybrid_search(queries, max(k, engine.rerank_top))
        if self.stage == "hybrid":
            return [hits[:k] for hits in hybrid]
        return [engine.rerank_hits(q, hits)[:k] for q, hits in zip(queries, hybrid)]


def load_manifest_encoder(index: SearchIndex) -> Encoder:
    """The encoder an index was built with, refusing a model whose weights have changed."""
    from shopsearch.models.registry import model_identity
    from shopsearch.retrieval.encoders import SentenceTransformerEncoder

    recorded = index.manifest.encoder or {}
    name = recorded.get("name") or recorded.get("path")
    current = model_identity(name)
    if recorded.get("revision") and current.get("revision") != recorded.get("revision"):
        raise IndexLoadError(
            f"index {index.path} was built with model {name!r} revision "
            f"{recorded.get('revision')}, but that model now resolves to revision "
            f"{current.get('revision')}; rebuild the index with `search-cli build-index`")
    encoder = SentenceTransformerEncoder(name, max_length=recorded.get("max_length", 128))
    if encoder.dim != recorded.get("dim"):
        raise IndexLoadError(f"index {index.path} holds {recorded.get('dim')}-d vectors but "
                             f"model {name!r} makes {encoder.dim}-d ones; rebuild the index")
    return encoder
