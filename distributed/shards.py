"""One shard's searcher, and groups of them: in this process, or as Ray actors.

A ``ShardSearcher`` holds one shard (an ordinary index loaded with the whole catalogue's BM25
statistics, so its scores are the unsharded index's) and answers the coordinator's calls:
its BM25 and dense top ``k`` for analysed queries and encoded query vectors, under filters
(each shard filters its own rows, inside its top-k), with the products of the rows it returns.
A group calls every shard with the same arguments and returns their answers in shard order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from shopsearch.errors import IndexLoadError, SearchError
from shopsearch.retrieval.bm25 import CollectionStats
from shopsearch.retrieval.filters import Filters, category_keys
from shopsearch.retrieval.types import Product

from .manifest import manifest_sha256

#: One shard's answer to a batch: per query its (product id, score) pairs, best first, and
#: the products they name.
Candidates = list[list[tuple[str, float]]]
ShardAnswer = tuple[Candidates, dict[str, Product]]


@dataclass(frozen=True)
class ShardFacets:
    products: int
    categories: list[str]
    price_range: tuple[float, float] | None


class ShardSearcher:
    """Search over one shard. ``expected_sha256``: the shard's ``manifest.json`` as the
    sharded manifest records it (a different generation or another build is refused)."""

    def __init__(
        self,
        folder: str,
        stats: CollectionStats,
        expected_sha256: str | None = None,
        threads: int | None = None,
    ) -> None:
        from shopsearch.index.store import load_index

        if threads is not None:
            import faiss

            faiss.omp_set_num_threads(threads)
        path = Path(folder)
        if expected_sha256 is not None:
            try:
                found = manifest_sha256(path)
            except FileNotFoundError:
                raise IndexLoadError(
                    f"shard {path} is missing; rebuild the sharded index"
                ) from None
            if found != expected_sha256:
                raise IndexLoadError(
                    f"shard {path} is not the one its sharded manifest records (its manifest "
                    f"changed); rebuild the sharded index"
                )
        started = time.perf_counter()
        self.index = load_index(path, bm25_stats=stats)
        self.ids = [p.id for p in self.index.products]
        self._row_of = {pid: row for row, pid in enumerate(self.ids)}
        if self.index.has_dense:
            self.index.faiss_index  # noqa: B018 - build it now, not in the first query
        self.load_seconds = time.perf_counter() - started

    def ready(self) -> int:
        """The number of products held (a Ray caller waits on it for the load)."""
        return len(self.ids)

    def facets(self) -> ShardFacets:
        filters = self.index.filters
        return ShardFacets(
            len(self.ids),
            sorted({p.category for p in self.index.products if p.category}),
            filters.price_range(),
        )

    def _answer(self, rows: list[np.ndarray], scores: list[np.ndarray]) -> ShardAnswer:
        candidates: Candidates = []
        products: dict[str, Product] = {}
        for row, score in zip(rows, scores):
            hits = [(self.ids[r], float(s)) for r, s in zip(row.tolist(), score.tolist()) if r >= 0]
            candidates.append(hits)
            for pid, _ in hits:
                products[pid] = self.index.products[self._row_of[pid]]
        return candidates, products

    def bm25(self, terms: Sequence[Sequence[str]], k: int, filters: Filters | None) -> ShardAnswer:
        """BM25 top ``k`` per analysed query, ties by id (the shard's rows are in id order)."""
        allowed = self.index.filters.mask(filters)
        rows, scores = [], []
        for query_terms in terms:
            r, s = self.index.bm25.top_k(list(query_terms), k, allowed)
            rows.append(r)
            scores.append(s)
        return self._answer(rows, scores)

    def dense(self, vectors: np.ndarray, k: int, filters: Filters | None) -> ShardAnswer:
        """Inner-product top ``k`` per query vector, shape ``(n_queries, dim)``."""
        from shopsearch.retrieval.dense import search_index

        allowed = self.index.filters.mask(filters)
        allowed_rows = np.flatnonzero(allowed) if allowed is not None else None
        rows, scores = search_index(self.index.faiss_index, vectors, k, allowed_rows)
        return self._answer(list(rows), list(scores))

    def products(self, ids: Sequence[str]) -> dict[str, Product]:
        rows = [self._row_of[i] for i in ids if i in self._row_of]
        return {self.ids[r]: self.index.products[r] for r in rows}


class ShardGroup(Protocol):
    """Calls a ``ShardSearcher`` method on every shard (``call``) or one (``call_one``)."""

    size: int

    def call(self, method: str, *args: Any) -> list[Any]: ...

    def call_one(self, shard: int, method: str, *args: Any) -> Any: ...


class LocalShards:
    """Every shard in this process, called one after another."""

    def __init__(self, searchers: Sequence[ShardSearcher]) -> None:
        self.searchers = list(searchers)
        self.size = len(self.searchers)

    def call(self, method: str, *args: Any) -> list[Any]:
        return [getattr(s, method)(*args) for s in self.searchers]

    def call_one(self, shard: int, method: str, *args: Any) -> Any:
        return getattr(self.searchers[shard], method)(*args)


class RayShards:
    """One Ray actor per shard; a call goes to every actor at once and waits for all, so a
    fan-out costs the slowest shard plus the transfers, not their sum."""

    def __init__(self, ray: Any, actors: Sequence[Any]) -> None:
        self.ray = ray
        self.actors = list(actors)
        self.size = len(self.actors)

    def call(self, method: str, *args: Any) -> list[Any]:
        # Arrays go into the object store once, not once per actor.
        shared = [self.ray.put(a) if isinstance(a, np.ndarray) else a for a in args]
        return list(self.ray.get([getattr(a, method).remote(*shared) for a in self.actors]))

    def call_one(self, shard: int, method: str, *args: Any) -> Any:
        return self.ray.get(getattr(self.actors[shard], method).remote(*args))


def local_shards(paths: Sequence[tuple[str, str]], stats: CollectionStats) -> LocalShards:
    """Load every shard here; ``paths``: (folder, expected manifest sha256) per shard."""
    return LocalShards([ShardSearcher(folder, stats, sha) for folder, sha in paths])


def ray_shards(
    ray: Any,
    paths: Sequence[tuple[str, str]],
    stats: CollectionStats,
    cpus: float = 1.0,
    timeout_s: float = 300.0,
) -> RayShards:
    """One ``ShardSearcher`` actor per shard (one FAISS thread each), loaded before returning.
    The statistics go to the object store once and every actor reads them from there."""
    remote = ray.remote(ShardSearcher).options(num_cpus=cpus)
    stats_ref = ray.put(stats)
    actors = [remote.remote(folder, stats_ref, sha, 1) for folder, sha in paths]
    try:
        ray.get([a.ready.remote() for a in actors], timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        for actor in actors:
            ray.kill(actor)
        raise SearchError(
            f"{len(paths)} shard actors ({cpus:g} CPU each) did not start within "
            f"{timeout_s:.0f} s; the cluster has {ray.available_resources().get('CPU', 0):g} "
            f"CPUs free (are other actors holding them?)"
        ) from None
    except Exception as exc:  # a shard that fails to load: its actor's error, as ours
        cause = getattr(exc, "cause", None)
        if isinstance(cause, IndexLoadError):
            raise cause from None
        raise
    return RayShards(ray, actors)


def merged_categories(facets: Sequence[ShardFacets]) -> tuple[list[str], set[str]]:
    """Every category of the catalogue, sorted, and every key a category filter may name."""
    names = sorted({c for f in facets for c in f.categories})
    keys = {key for name in names for key in category_keys(name)}
    return names, keys
