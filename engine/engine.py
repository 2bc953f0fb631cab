"""The search engine: one index's query pipeline, composed from its stages.

    bm25 ─┐
          ├─ hybrid (fusion of ``depth`` candidates each) ── rerank (top ``blend.top``) ── ltr
    dense ┘

``ltr`` (when the index has a learning-to-rank model, ``search-cli train-ltr``) reorders the
candidates of rerank (or of hybrid without a reranker) by a LambdaMART model (``shopsearch.ltr``).

Every stage is a ``Retriever`` (``search(queries, k, filters)``), and every caller runs
these same objects: ``search-cli query`` and the server call :meth:`SearchEngine.search`,
which runs one stage for one query with timings; ``benchmark``, the tuners and the trainers
take :meth:`SearchEngine.stage` and call its ``search`` on batches. A benchmark's ``hybrid``
or ``rerank`` row is therefore, by construction, what ``query`` returns at the same settings.
The settings (candidate depth, fusion, rerank blend) come from the index manifest unless
overridden.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Mapping

from shopsearch.errors import SearchError
from shopsearch.index.store import SearchIndex, load_index
from shopsearch.ltr.model import LTRModel
from shopsearch.ltr.stage import DEFAULT_LTR_TOP, LTRRetriever
from shopsearch.rerank.blend import BlendConfig
from shopsearch.rerank.stage import RerankedRetriever
from shopsearch.results import SearchResult
from shopsearch.retrieval.base import Encoder, Reranker, Retriever, Timings
from shopsearch.retrieval.cache import DEFAULT_CACHE_SIZE, CachedQueryEncoder, LRUCache
from shopsearch.retrieval.filters import Filters
from shopsearch.retrieval.fusion import FusionConfig
from shopsearch.retrieval.hybrid import HybridRetriever
from shopsearch.retrieval.retrievers import BM25Retriever, DenseRetriever
from shopsearch.retrieval.types import Hit, Product

logger = logging.getLogger(__name__)

STAGES = ("bm25", "dense", "hybrid", "rerank", "ltr")


def check_query(query: str) -> str:
    """The query itself, or a ``SearchError`` a user can act on when it has no words."""
    if not isinstance(query, str) or not query.strip():
        raise SearchError("the query is empty; type some words to search for")
    return query


class SearchEngine:
    """The stages of one index's pipeline and a one-query ``search`` over any of them.

    ``depth``: candidates each first-stage retriever gives fusion (default: the manifest's);
    ``fusion``: how they are fused (default: the manifest's); ``blend``: how the reranker's
    click logits and the fused score order its top candidates (default: pure click order over
    the top 50; :meth:`open` reads the installed reranker's tuned blend).
    """

    def __init__(
        self,
        index: SearchIndex,
        *,
        encoder: Encoder | None = None,
        reranker: Reranker | None = None,
        depth: int | None = None,
        fusion: FusionConfig | None = None,
        blend: BlendConfig | None = None,
        ltr: LTRModel | None = None,
        ltr_top: int | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        spelling: bool = False,
    ) -> None:
        self.index = index
        if encoder is not None and cache_size > 0:
            encoder = CachedQueryEncoder(encoder, cache_size)
        self.encoder = encoder
        self.results: LRUCache[SearchResult] = LRUCache(cache_size)
        self.reranker = reranker
        self.depth = depth if depth is not None else index.manifest.candidate_depth
        if self.depth < 1:
            raise SearchError(f"the candidate depth must be >= 1, got {self.depth}")
        self.fusion = fusion or FusionConfig.from_dict(index.manifest.fusion)
        self.blend = blend or BlendConfig()
        sparse, dense = self._first_stages(index, encoder)
        if spelling and isinstance(sparse, BM25Retriever):
            from shopsearch.retrieval.spelling import SpellingCorrector

            sparse.speller = SpellingCorrector.for_bm25(index.bm25)
        hybrid = HybridRetriever(sparse, dense, self.fusion, self.depth)
        stages: dict[str, Retriever] = {"bm25": sparse}
        if dense is not None:
            stages["dense"] = dense
        stages["hybrid"] = hybrid
        if reranker is not None:
            stages["rerank"] = RerankedRetriever(hybrid, reranker, self.product_texts, self.blend)
        self.stages = stages
        self.sparse = sparse
        self.ltr_top = ltr_top or DEFAULT_LTR_TOP
        self._ltr_refused = ""
        if ltr is not None:
            wanted = ltr.info.get("first_stage", self.ltr_first_stage)
            if wanted == self.ltr_first_stage:
                stages["ltr"] = self.ltr_stage(ltr)
            else:
                self._ltr_refused = (
                    f"the learning-to-rank model was trained over the {wanted} stage but this "
                    f"engine's candidates come from {self.ltr_first_stage}"
                    + (" (load the reranker)" if wanted == "rerank" else "")
                )

    @property
    def ltr_first_stage(self) -> str:
        """The stage whose candidates the ``ltr`` stage reorders: rerank, else hybrid."""
        return "rerank" if "rerank" in self.stages else "hybrid"

    def ltr_stage(self, model: LTRModel | None) -> LTRRetriever:
        """An ``ltr`` stage over this engine's candidates (``model=None``: for training, which
        needs its candidates and features but no model yet)."""
        from shopsearch.ltr.features import Featurizer

        return LTRRetriever(
            self.stages[self.ltr_first_stage],
            model,
            Featurizer(self.product, self.index.analyzer.tokenize),
            self.analyse,
            self.ltr_top,
        )

    def _first_stages(
        self, index: SearchIndex, encoder: Encoder | None
    ) -> tuple[BM25Retriever, DenseRetriever | None]:
        """The BM25 and dense retrievers, and the product lookups later stages use
        (``product_texts``); a sharded engine (shopsearch.distributed) fans them out."""
        self._row_of = {p.id: row for row, p in enumerate(index.products)}
        self.product_texts: Mapping[str, str] = {p.id: p.text() for p in index.products}
        ids = [p.id for p in index.products]
        sparse = BM25Retriever(index.bm25, index.analyzer, ids, index.filters)
        dense = (
            DenseRetriever(encoder, index.faiss_index, ids, index.filters)
            if encoder is not None
            else None
        )
        return sparse, dense

    @classmethod
    def _load_index(cls, path: str | Path) -> SearchIndex:
        return load_index(path)

    @staticmethod
    def _warm_up_dense(index: SearchIndex, encoder: Encoder) -> None:
        from shopsearch.retrieval.dense import search_index

        search_index(index.faiss_index, encoder.encode_queries(["warm-up"]), 1)

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        reranker: str | None = None,
        use_reranker: bool = True,
        load_encoder: bool = True,
        depth: int | None = None,
        fusion: FusionConfig | None = None,
        blend: BlendConfig | None = None,
        rerank_top: int | None = None,
        use_ltr: bool = True,
        spelling: bool = False,
        encoder_runtime: str | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> SearchEngine:
        """Load an index with the encoder it was built with and its reranker, if any.

        The installed reranker comes with the blend ``tune-rerank`` stored for it; an explicit
        ``reranker`` folder ranks by its click probability alone (weight 1). ``rerank_top``
        overrides how many candidates are reranked. ``encoder_runtime`` runs the query tower on
        another runtime than the manifest records (``models.runtime``); ``cache_size`` bounds
        the query-embedding and result caches (0: none).
        """
        from shopsearch.distributed.manifest import is_sharded_index
        from shopsearch.index.encoder import load_index_encoder

        if cls is SearchEngine and is_sharded_index(path):
            from shopsearch.distributed.engine import ShardedSearchEngine

            cls = ShardedSearchEngine  # the same pipeline over shards (built with --ray)
        index = cls._load_index(path)
        # jieba loads its dictionary on first use (~0.5 s); do it now so that per-query
        # timings measure the query, not the warm-up.
        index.analyzer.tokenize("预热 warm-up")
        encoder = None
        if load_encoder and index.has_dense:
            encoder = load_index_encoder(index, runtime=encoder_runtime)
            # The first forward pass and the first FAISS search pay one-off set-up costs
            # (hundreds of ms); pay them here rather than in the first query's timings.
            cls._warm_up_dense(index, encoder)
        rerank_model: Reranker | None = None
        if use_reranker:
            source = reranker or index.reranker_path
            if source is not None:
                from shopsearch.rerank.cross_encoder import CrossEncoderReranker

                cross_encoder = CrossEncoderReranker(source)
                cross_encoder.logits("warm-up", ["warm-up"])
                cross_encoder.pretokenize([p.text() for p in index.products])
                rerank_model = cross_encoder
        if blend is None and rerank_model is not None and reranker is None:
            blend = BlendConfig.from_dict((index.manifest.reranker or {}).get("blend"))
        if rerank_top is not None:
            blend = replace(blend or BlendConfig(), top=rerank_top)
        ltr_model = None
        ltr_path = getattr(index, "ltr_path", None)
        if use_ltr and ltr_path is not None:
            ltr_model = LTRModel.load(ltr_path)
        return cls(
            index,
            encoder=encoder,
            reranker=rerank_model,
            depth=depth,
            fusion=fusion,
            blend=blend,
            ltr=ltr_model,
            ltr_top=(index.manifest.ltr or {}).get("top") if ltr_model is not None else None,
            spelling=spelling,
            cache_size=cache_size,
        )

    @property
    def final_stage(self) -> str:
        """The stage a shopper is served: ltr when there is a learning-to-rank model, else
        rerank when there is a reranker, else hybrid."""
        if "ltr" in self.stages:
            return "ltr"
        return "rerank" if "rerank" in self.stages else "hybrid"

    def stage(self, name: str) -> Retriever:
        """The ``Retriever`` of one stage of this pipeline."""
        if name not in STAGES:
            raise SearchError(f"unknown stage {name!r}; choose from {', '.join(STAGES)}")
        if name == "dense" and "dense" not in self.stages:
            raise SearchError("this index has no dense part, so it has no 'dense' stage")
        if name == "rerank" and "rerank" not in self.stages:
            raise SearchError("no reranker: the index has none and none was given")
        if name == "ltr" and "ltr" not in self.stages:
            raise SearchError(
                self._ltr_refused
                or "no learning-to-rank model: train one with `search-cli train-ltr`"
            )
        return self.stages[name]

    def categories(self) -> list[str]:
        """Every category in the catalogue, sorted; what a category filter may name."""
        return sorted({p.category for p in self.index.products if p.category})

    def product(self, product_id: str) -> Product:
        return self.index.products[self._row_of[product_id]]

    def analyse(self, query: str) -> list[str]:
        """The query's BM25 terms, as the BM25 stage sees them."""
        return self.sparse.analyse(query)

    def search(
        self,
        query: str,
        k: int = 10,
        filters: Filters | None = None,
        *,
        explain: bool = False,
        stage: str | None = None,
    ) -> SearchResult:
        """Run the pipeline up to ``stage`` (default: the full one) for one query and return
        its top ``k`` products with per-step timings."""
        check_query(query)
        if k < 1:
            raise SearchError("k must be at least 1")
        name = stage or self.final_stage
        retriever = self.stage(name)
        started = time.perf_counter()
        key = (query, k, filters, name, explain)
        cached = self.results.get(key)
        if cached is not None:
            elapsed = (time.perf_counter() - started) * 1000
            return replace(cached, timings_ms={"result_cache": elapsed, "total": elapsed})
        result = self._search(query, k, filters, explain, name, retriever, started)
        self.results.put(key, result)
        return result

    def cache_stats(self) -> dict[str, dict[str, object]]:
        """Hit rates of the result cache and, with a dense part, the query-embedding cache."""
        stats: dict[str, dict[str, object]] = {"results": self.results.stats()}
        if isinstance(self.encoder, CachedQueryEncoder):
            stats["query_embeddings"] = self.encoder.cache.stats()
        return stats

    def _search(
        self,
        query: str,
        k: int,
        filters: Filters | None,
        explain: bool,
        name: str,
        retriever: Retriever,
        started: float,
    ) -> SearchResult:
        timings: Timings = {}
        hits = retriever.search([query], k, filters, timings=timings)[0]
        timings["total"] = (time.perf_counter() - started) * 1000
        terms = self.analyse(query)
        return SearchResult(
            query=query,
            stage=name,
            hits=hits,
            products={h.product_id: self.product(h.product_id) for h in hits},
            query_terms=terms,
            timings_ms=timings,
            matched_terms=self._matched_terms(terms, hits) if explain else {},
            reranked=name == "rerank" or (name == "ltr" and self.reranker is not None),
            calibrated=name in ("rerank", "ltr")
            and bool(self.reranker and self.reranker.calibrated),
            notes=self._notes(name, hits, k, filters),
            corrections=[
                c.to_dict() for c in getattr(self.sparse, "corrections", lambda q: [])(query)
            ],
        )

    def _matched_terms(self, terms: list[str], hits: list[Hit]) -> dict[str, list[str]]:
        wanted = set(terms)
        return {
            h.product_id: sorted(
                wanted & set(self.index.analyzer.tokenize(self.product_texts[h.product_id]))
            )
            for h in hits
        }

    def _notes(self, stage: str, hits: list[Hit], k: int, filters: Filters | None) -> list[str]:
        notes = []
        if stage == "hybrid" and "dense" not in self.stages:
            notes.append("no dense part in this index: results are BM25 only")
        if stage == "rerank" and self.reranker is not None and not self.reranker.calibrated:
            notes.append(
                "reranker has no calibration.json: click probabilities are a plain "
                "sigmoid of its logits"
            )
        if stage != "rerank" and self.reranker is None and stage == self.final_stage:
            notes.append(
                "results are not reranked: this index has no fine-tuned reranker "
                "(train one with `search-cli train-reranker` or pass --reranker)"
            )
        if filters is not None and filters.category is not None:
            if not self.index.filters.knows_category(filters.category):
                notes.append(f"no product has the category {filters.category!r}")
        if filters is not None and filters.active and len(hits) < k:
            notes.append(f"only {len(hits)} products match the filters")
        return notes
