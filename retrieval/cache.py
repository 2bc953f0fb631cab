"""Bounded LRU caches for the query path, with hit rates.

Shop traffic is head-heavy: the same few thousand queries make up much of a day. Two caches
use that, both per engine (a reload builds a new engine, so an entry never outlives the index
generation and models it was computed with):

* query embeddings, keyed by the query text (the query tower is a pure function of it);
* served results, keyed by (query, k, filters, stage, explain).

``tests/retrieval/test_cache.py`` checks eviction order and that a cached answer equals a
fresh one.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Generic, Hashable, Sequence, TypeVar

import numpy as np

V = TypeVar("V")

#: Default entries per cache: a 384-d float32 embedding is 1.5 kB, a result a few kB.
DEFAULT_CACHE_SIZE = 4096


class LRUCache(Generic[V]):
    """At most ``size`` entries, least recently used evicted first; ``size=0`` stores nothing."""

    def __init__(self, size: int = DEFAULT_CACHE_SIZE) -> None:
        if size < 0:
            raise ValueError(f"cache size must be >= 0, got {size}")
        self.size = size
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Hashable, value: V) -> None:
        if self.size == 0:
            return
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def get_or_compute(self, key: Hashable, compute: Callable[[], V]) -> V:
        value = self.get(key)
        if value is None:
            value = compute()
            self.put(key, value)
        return value

    @property
    def hit_rate(self) -> float:
        looked_up = self.hits + self.misses
        return self.hits / looked_up if looked_up else 0.0

    def stats(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "entries": len(self),
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hit_rate,
        }


class CachedQueryEncoder:
    """An ``Encoder`` whose query tower remembers the embeddings of recent queries; the
    product tower (index builds) passes through uncached."""

    def __init__(self, encoder: Any, size: int = DEFAULT_CACHE_SIZE) -> None:
        self.encoder = encoder
        self.name = encoder.name
        self.dim = encoder.dim
        self.cache: LRUCache[np.ndarray] = LRUCache(size)

    def __getattr__(self, name: str) -> Any:
        # describe(), identity, runtime...: whatever the wrapped encoder offers.
        return getattr(self.encoder, name)

    def encode_queries(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        found = [self.cache.get(t) for t in texts]
        missing = list(dict.fromkeys(t for t, v in zip(texts, found) if v is None))
        if missing:
            fresh = dict(zip(missing, self.encoder.encode_queries(missing, batch_size)))
            for text, vector in fresh.items():
                self.cache.put(text, vector)
            found = [v if v is not None else fresh[t] for t, v in zip(texts, found)]
        vectors = [v for v in found if v is not None]
        if not vectors:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack(vectors).astype(np.float32, copy=False)

    def encode_documents(
        self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        return self.encoder.encode_documents(texts, batch_size, show_progress)
