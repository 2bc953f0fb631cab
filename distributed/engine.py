"""Search over a sharded index: the coordinator's side.

    query ── analyse (global vocabulary) ──> every shard: BM25 top k  ──┐
          └─ encode once ─────────────────> every shard: dense top k ──┤ exact merge
                                                                        └─> fusion, rerank (once)

``ShardedSearchEngine`` is the ``SearchEngine`` whose two first-stage retrievers fan out to the
shards and merge; hybrid fusion, the reranker and everything after them are the engine's own,
run once on the merged lists. The merge is exact: each shard's BM25 scores are the unsharded
index's (global statistics), each shard returns its top ``k`` by ``(-score, id)``, and the
global top ``k`` under that order is, restricted to any shard, a prefix of that shard's list;
so taking the first ``k`` of the shards' lists merged by ``(-score, id)`` is the unsharded top
``k``. The same holds for exact (flat) dense search. The products of the returned candidates
come back with them into a bounded cache (``ShardedCatalogue``); a product not in it is
fetched from the shard that owns it (``shard_of``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from shopsearch.engine import SearchEngine
from shopsearch.errors import IndexLoadError, SearchError
from shopsearch.index.generations import RERANKER_DIR
from shopsearch.index.manifest import Manifest
from shopsearch.retrieval.analysis import Analyzer
from shopsearch.retrieval.base import Encoder, Timings
from shopsearch.retrieval.bm25 import CollectionStats, backoff_terms
from shopsearch.retrieval.filters import Filters
from shopsearch.retrieval.retrievers import encode_each
from shopsearch.retrieval.timing import timed
from shopsearch.retrieval.types import Hit, Product

from .manifest import ShardedManifest, read_stats, shard_of
from .shards import ShardAnswer, ShardFacets, ShardGroup, local_shards, merged_categories

#: Products the coordinator keeps from recent answers (for display and the reranker's texts).
CATALOGUE_CACHE = 100_000

ShardMaker = Callable[[Sequence[tuple[str, str]], CollectionStats], ShardGroup]


class ShardedFilters:
    """What the engine asks of a catalogue's filter fields, from the shards' facets."""

    def __init__(self, facets: Sequence[ShardFacets]) -> None:
        self.categories, self._keys = merged_categories(facets)
        ranges = [f.price_range for f in facets if f.price_range is not None]
        self._price = (min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else None

    def knows_category(self, category: str) -> bool:
        return category.strip().casefold() in self._keys

    def price_range(self) -> tuple[float, float] | None:
        return self._price


@dataclass
class ShardedIndex:
    """A sharded index as the coordinator holds it: its manifest, the catalogue's analyser and
    vocabulary (for query analysis), its shards, and the merged facets. It has what the engine
    and the server read of an index (``path``, ``manifest``, ``filters``, ``analyzer``,
    ``has_dense``, ``reranker_path``)."""

    path: Path
    manifest: ShardedManifest
    analyzer: Analyzer
    stats: CollectionStats
    shards: ShardGroup
    filters: ShardedFilters

    @property
    def generation(self) -> int:
        return self.manifest.generation

    @property
    def has_dense(self) -> bool:
        return self.manifest.faiss is not None

    @property
    def reranker_path(self) -> Path | None:
        path = self.path / str((self.manifest.reranker or {}).get("path") or RERANKER_DIR)
        return path if self.manifest.reranker and path.is_dir() else None

    def owner(self, product_id: str) -> int | None:
        """The shard that holds ``product_id`` if it exists (its partition has a shard)."""
        partition = shard_of(product_id, self.manifest.partitions)
        for i, record in enumerate(self.manifest.shards):
            if record["partition"] == partition:
                return i
        return None


def open_sharded_index(folder: str | Path, make_shards: ShardMaker = local_shards) -> ShardedIndex:
    """Load a sharded index: its manifest and statistics (checked), then its shards with
    ``make_shards`` (default: in this process; ``shards.ray_shards`` makes Ray actors)."""
    from shopsearch.index.store import index_analyzer

    folder = Path(folder)
    manifest = ShardedManifest.read(folder)
    if not manifest.shards:
        raise IndexLoadError(f"index {folder} is damaged: its manifest lists no shards")
    stats = read_stats(folder, manifest)
    first = folder / manifest.shards[0]["path"]
    analyzer = index_analyzer(first, Manifest.read(first))
    paths = [(str(folder / s["path"]), str(s["manifest_sha256"])) for s in manifest.shards]
    shards = make_shards(paths, stats)
    facets: list[ShardFacets] = shards.call("facets")
    held = sum(f.products for f in facets)
    if held != manifest.products or stats.n_docs != manifest.products:
        raise IndexLoadError(
            f"index {folder} is damaged: its manifest says {manifest.products} products, "
            f"the shards hold {held} and the statistics count {stats.n_docs}; rebuild it"
        )
    analyzer.tokenize("预热 warm-up")  # jieba's dictionary, loaded now
    return ShardedIndex(folder, manifest, analyzer, stats, shards, ShardedFilters(facets))


class ShardedCatalogue:
    """Products by id for the coordinator: the products that came back with recent
    candidates (at most ``capacity``, least recently used dropped), others fetched from
    their shard. Thread-safe (the server answers several queries at once)."""

    def __init__(self, index: ShardedIndex, capacity: int = CATALOGUE_CACHE) -> None:
        self.index = index
        self.capacity = capacity
        self._cache: OrderedDict[str, Product] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, products: Mapping[str, Product]) -> None:
        with self._lock:
            for pid, product in products.items():
                self._cache[pid] = product
                self._cache.move_to_end(pid)
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)

    def product(self, product_id: str) -> Product:
        with self._lock:
            product = self._cache.get(product_id)
        if product is not None:
            return product
        shard = self.index.owner(product_id)
        found = {} if shard is None else self.index.shards.call_one(shard, "products", [product_id])
        if product_id not in found:
            raise KeyError(product_id)
        self.add(found)
        return found[product_id]

    @property
    def texts(self) -> Mapping[str, str]:
        """``{product id: Product.text()}``, as the reranker and --explain read it."""
        return _Texts(self)


class _Texts(Mapping[str, str]):
    def __init__(self, catalogue: ShardedCatalogue) -> None:
        self.catalogue = catalogue

    def __getitem__(self, product_id: str) -> str:
        return self.catalogue.product(product_id).text()

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.catalogue._cache))

    def __len__(self) -> int:
        return self.catalogue.index.manifest.products


def merge_top_k(answers: Sequence[ShardAnswer], k: int, stage: str) -> list[list[Hit]]:
    """The global top ``k`` per query from every shard's top ``k``, by ``(-score, id)``; each
    hit's score is also recorded under ``stage``."""
    n_queries = len(answers[0][0]) if answers else 0
    merged = []
    for q in range(n_queries):
        pairs = [pair for candidates, _ in answers for pair in candidates[q]]
        pairs.sort(key=lambda pair: (-pair[1], pair[0]))
        merged.append([Hit(pid, score, {stage: score}) for pid, score in pairs[:k]])
    return merged


class ShardedBM25Retriever:
    """BM25 over every shard: queries analysed once here against the catalogue's vocabulary,
    each shard's top ``k`` merged exactly."""

    name = "bm25"

    def __init__(self, index: ShardedIndex, catalogue: ShardedCatalogue) -> None:
        self.index = index
        self.catalogue = catalogue

    def analyse(self, query: str) -> list[str]:
        """The query's BM25 terms, backed off against the whole catalogue's vocabulary."""
        return backoff_terms(self.index.analyzer.tokenize(query), self.index.stats.doc_freq)

    def search(
        self,
        queries: Sequence[str],
        k: int = 10,
        filters: Filters | None = None,
        *,
        timings: Timings | None = None,
    ) -> list[list[Hit]]:
        with timed(timings, "analysis"):
            terms = [self.analyse(q) for q in queries]
        with timed(timings, "bm25"):
            answers: list[ShardAnswer] = self.index.shards.call("bm25", terms, k, filters)
        with timed(timings, "merge"):
            for _, products in answers:
                self.catalogue.add(products)
            return merge_top_k(answers, k, "bm25")


class ShardedDenseRetriever:
    """The query tower here (once per query, as ``DenseRetriever`` encodes), inner-product
    search on every shard, merged exactly."""

    name = "dense"

    def __init__(self, index: ShardedIndex, encoder: Encoder, catalogue: ShardedCatalogue) -> None:
        self.index = index
        self.encoder = encoder
        self.catalogue = catalogue

    def search(
        self,
        queries: Sequence[str],
        k: int = 10,
        filters: Filters | None = None,
        *,
        timings: Timings | None = None,
    ) -> list[list[Hit]]:
        with timed(timings, "encode_query"):
            vectors = encode_each(self.encoder, queries)
        with timed(timings, "dense_search"):
            answers: list[ShardAnswer] = self.index.shards.call("dense", vectors, k, filters)
        with timed(timings, "merge"):
            for _, products in answers:
                self.catalogue.add(products)
            return merge_top_k(answers, k, "dense")


class ShardedSearchEngine(SearchEngine):
    """The engine over a sharded index, its shards in this process (``open`` of a sharded
    folder, ``SearchEngine.open`` chooses it by itself). ``RayShardedSearchEngine`` puts
    the shards in Ray actors."""

    @classmethod
    def _load_index(cls, path: str | Path) -> Any:
        """A ``ShardedIndex`` (it has what ``open`` reads of an index)."""
        return open_sharded_index(path)

    @staticmethod
    def _warm_up_dense(index: Any, encoder: Encoder) -> None:
        index.shards.call("dense", encoder.encode_queries(["warm-up"]), 1, None)

    def _first_stages(self, index: Any, encoder: Encoder | None) -> tuple[Any, Any]:
        """Retrievers that fan out to the shards, and the catalogue their answers fill."""
        if not isinstance(index, ShardedIndex):
            raise SearchError("a sharded engine needs a sharded index")
        self.catalogue = ShardedCatalogue(index)
        self.product_texts = self.catalogue.texts
        sparse = ShardedBM25Retriever(index, self.catalogue)
        dense = (
            ShardedDenseRetriever(index, encoder, self.catalogue) if encoder is not None else None
        )
        return sparse, dense

    def product(self, product_id: str) -> Product:
        return self.catalogue.product(product_id)

    def categories(self) -> list[str]:
        return list(self.index.filters.categories)  # type: ignore[attr-defined]


class RayShardedSearchEngine(ShardedSearchEngine):
    """A sharded engine whose shards are Ray actors (one per shard, one CPU or a share of
    the cluster's each). Ray must be initialised (``cluster.ray_session``); the actors live
    as long as the engine."""

    @classmethod
    def _load_index(cls, path: str | Path) -> Any:
        from .cluster import actor_cpus, import_ray
        from .shards import ray_shards

        ray = import_ray()
        if not ray.is_initialized():
            raise SearchError("connect to Ray first (shopsearch.distributed.cluster.ray_session)")

        def make(paths: Sequence[tuple[str, str]], stats: CollectionStats) -> ShardGroup:
            return ray_shards(ray, paths, stats, actor_cpus(ray, len(paths)))

        return open_sharded_index(path, make)
