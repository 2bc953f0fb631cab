"""The query path's LRU caches: eviction order, hit rates, and cached answers equal fresh ones."""

from __future__ import annotations

import numpy as np
import pytest

from shopsearch.retrieval.cache import CachedQueryEncoder, LRUCache
from shopsearch.retrieval.filters import Filters


def test_lru_evicts_the_least_recently_used_and_counts_hits():
    cache: LRUCache[int] = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)  # evicts b
    assert cache.get("b") is None and cache.get("c") == 3 and len(cache) == 2
    assert (cache.hits, cache.misses) == (2, 1)
    assert cache.hit_rate == pytest.approx(2 / 3)
    assert LRUCache(0).get_or_compute("x", lambda: 5) == 5 and len(LRUCache(0)) == 0
    with pytest.raises(ValueError):
        LRUCache(-1)


def test_cached_query_encoder_returns_the_encoders_vectors(keyword_encoder):
    cached = CachedQueryEncoder(keyword_encoder, 8)
    texts = ["king bed", "夏季连衣裙", "king bed"]
    np.testing.assert_array_equal(
        cached.encode_queries(texts), keyword_encoder.encode_queries(texts)
    )
    np.testing.assert_array_equal(
        cached.encode_queries(texts[:1]), keyword_encoder.encode_queries(texts[:1])
    )
    assert (cached.cache.hits, cached.cache.misses) == (1, 3)  # misses: a batch looks up first
    assert cached.encode_queries([]).shape == (0, keyword_encoder.dim)


def test_engine_result_cache_serves_the_same_answer_and_keys_on_filters(engine):
    first = engine.search("夏季连衣裙", k=3)
    again = engine.search("夏季连衣裙", k=3)
    assert [h.product_id for h in again.hits] == [h.product_id for h in first.hits]
    assert "result_cache" in again.timings_ms and "result_cache" not in first.timings_ms
    filtered = engine.search("夏季连衣裙", k=3, filters=Filters(max_price=1.0))
    assert "result_cache" not in filtered.timings_ms
    assert engine.cache_stats()["results"]["hits"] == 1
    assert "query_embeddings" in engine.cache_stats()


def test_no_cache_engine_recomputes(built_index, keyword_encoder):
    from shopsearch.engine import SearchEngine
    from shopsearch.index.store import load_index

    engine = SearchEngine(load_index(built_index), encoder=keyword_encoder, cache_size=0)
    engine.search("king bed")
    assert "result_cache" not in engine.search("king bed").timings_ms
    assert engine.encoder is keyword_encoder
