"""A sharded index searches exactly as the unsharded one: same ids, same order, same scores.

These run the sharded build and search in this process (``LocalPool``, ``LocalShards``):
the same code the Ray workers and actors run (tests/distributed/test_ray.py), without
starting Ray.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
import pytest

from shopsearch.distributed.build import LocalPool, build_sharded_index, partition
from shopsearch.distributed.engine import ShardedSearchEngine, merge_top_k
from shopsearch.distributed.manifest import ShardedManifest, is_sharded_index, shard_of
from shopsearch.engine import SearchEngine
from shopsearch.errors import IndexLoadError, SearchError
from shopsearch.index.store import build_index, load_index
from shopsearch.retrieval.bm25 import BM25Index, CollectionStats, TermFrequencies
from shopsearch.retrieval.filters import Filters

FIXTURE_QUERIES = [
    "夏季连衣裙",
    "summer dress",
    "king bed",
    "实木床",
    "cordless drill",
    "dog bed",
    "linen",
    "iphone15 手机壳",
]
DEMO_QUERIES = ["夏季连衣裙", "king poster bed", "white nylon backpack", "walnut nightstand"]


class HashEncoder:
    """Character trigrams hashed into 64 signed dimensions: cheap, deterministic, and unlike
    the keyword encoder it rarely gives two different texts the same vector (ties at the
    cut-off would make any two exact indexes disagree)."""

    name = "fake-hash"
    dim = 64

    def encode_queries(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            text = f"  {text.lower()} "
            for j in range(len(text) - 2):
                h = hashlib.blake2b(text[j : j + 3].encode(), digest_size=4).digest()
                out[i, h[0] % self.dim] += 1.0 if h[1] & 1 else -1.0
            out[i, 0] += 0.01
            out[i] /= np.linalg.norm(out[i])
        return out

    def encode_documents(
        self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        return self.encode_queries(texts)

    def describe(self) -> dict:
        return {"name": self.name, "dim": self.dim, "revision": "test"}


def assert_same(expected, got, tol: float = 1e-5) -> None:
    assert [h.product_id for h in got] == [h.product_id for h in expected]
    for a, b in zip(expected, got):
        assert b.score == pytest.approx(a.score, abs=tol)
        for name, value in a.scores.items():
            assert b.scores[name] == pytest.approx(value, abs=tol), name


def compare(plain: SearchEngine, sharded: SearchEngine, queries, filters_list, k=10) -> int:
    checked = 0
    for stage in plain.stages:
        for filters in filters_list:
            want = plain.stage(stage).search(queries, k, filters)
            got = sharded.stage(stage).search(queries, k, filters)
            for a, b in zip(want, got):
                assert_same(a, b)
                checked += len(a)
    return checked


def test_collection_stats_of_parts_give_the_whole_collections_scores(analyzer=None):
    docs = [["a", "b"], ["b", "c", "c"], ["a"], ["d", "a", "b"], ["c"]]
    whole = BM25Index.build(docs)
    parts = [[0, 2, 4], [1, 3]]
    freqs = [TermFrequencies.from_tokens([docs[i] for i in rows]) for rows in parts]
    stats = CollectionStats.merge(CollectionStats.of(f) for f in freqs)
    assert stats == CollectionStats.of(TermFrequencies.from_tokens(docs))
    for rows, f in zip(parts, freqs):
        part = BM25Index.from_frequencies(f, whole.params, stats)
        for query in (["a"], ["b", "c"], ["d", "a", "a"]):
            np.testing.assert_array_equal(part.score(query)[0], whole.score(query)[0][rows])


def test_stats_that_miss_a_term_are_refused():
    freqs = TermFrequencies.from_tokens([["a", "z"]])
    with pytest.raises(ValueError, match="lack 1 of this part's terms"):
        BM25Index.from_frequencies(freqs, stats=CollectionStats(1, 2, {"a": 1}))


def test_partition_is_stable_and_complete(products):
    parts = partition(products, 4)
    assert sorted(p.id for part in parts for p in part) == sorted(p.id for p in products)
    for i, part in enumerate(parts):
        assert [p.id for p in part] == sorted(p.id for p in part)
        assert all(shard_of(p.id, 4) == i for p in part)
    assert shard_of("p01", 4) == int(hashlib.sha256(b"p01").hexdigest()[:16], 16) % 4
    with pytest.raises(SearchError, match="twice"):
        partition([products[0], products[0]], 2)


def test_merge_is_by_score_then_id():
    answers = [([[("b", 2.0), ("d", 1.0)]], {}), ([[("a", 2.0), ("c", 1.5)]], {})]
    hits = merge_top_k(answers, 3, "bm25")[0]
    assert [(h.product_id, h.score) for h in hits] == [("a", 2.0), ("b", 2.0), ("c", 1.5)]


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_fixture_catalogue_sharded_equals_unsharded(
    tmp_path, products, keyword_encoder, monkeypatch, shards
):
    from shopsearch.index import encoder as index_encoder

    monkeypatch.setattr(index_encoder, "load_index_encoder", lambda *a, **k: keyword_encoder)
    build_index(products, tmp_path / "plain", encoder=keyword_encoder)
    summary = build_sharded_index(
        products, tmp_path / "sharded", pool=LocalPool(lambda: keyword_encoder), shards=shards
    )
    assert summary.products == len(products)
    assert sum(summary.shard_products) == len(products)
    assert is_sharded_index(tmp_path / "sharded")
    plain = SearchEngine.open(tmp_path / "plain", depth=20)
    sharded = SearchEngine.open(tmp_path / "sharded", depth=20)
    assert isinstance(sharded, ShardedSearchEngine)
    filters = [
        None,
        Filters(category="连衣裙"),
        Filters(max_price=100.0),
        Filters(category="Beds", min_price=100.0),
        Filters(category="no such category"),
    ]
    assert compare(plain, sharded, FIXTURE_QUERIES, filters) > 0
    # The served path (one query through SearchEngine.search) agrees too, products and notes.
    for query in FIXTURE_QUERIES[:3]:
        a, b = plain.search(query, k=5), sharded.search(query, k=5)
        want, got = a.to_dict()["results"], b.to_dict()["results"]
        assert len(want) == len(got)
        for x, y in zip(want, got):
            assert x.keys() == y.keys()
            for key, value in x.items():
                assert y[key] == (pytest.approx(value) if isinstance(value, float) else value)
        assert a.notes == b.notes and a.query_terms == b.query_terms
    assert sharded.categories() == plain.categories()
    assert sharded.index.filters.price_range() == plain.index.filters.price_range()


def test_every_bm25_score_equals_the_unsharded_one(tmp_path, products):
    build_index(products, tmp_path / "plain", encoder=None)
    build_sharded_index(products, tmp_path / "sharded", pool=LocalPool(None), shards=3)
    plain = load_index(tmp_path / "plain")
    sharded = SearchEngine.open(tmp_path / "sharded")
    row_of = {p.id: r for r, p in enumerate(plain.products)}
    for searcher in sharded.index.shards.searchers:  # type: ignore[attr-defined]
        for term in plain.bm25.vocabulary:
            scores, _ = searcher.index.bm25.score([term])
            want, _ = plain.bm25.score([term])
            rows = [row_of[i] for i in searcher.ids]
            np.testing.assert_array_equal(scores, want[rows])


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_demo_catalogue_sharded_equals_unsharded(tmp_path, shards, monkeypatch):
    from shopsearch.demo.catalog import generate_catalog
    from shopsearch.index import encoder as index_encoder

    products = generate_catalog()
    encoder = HashEncoder()
    monkeypatch.setattr(index_encoder, "load_index_encoder", lambda index, *a, **k: encoder)
    build_index(products, tmp_path / "plain", encoder=encoder)
    build_sharded_index(products, tmp_path / "sharded", pool=LocalPool(HashEncoder), shards=shards)
    plain = SearchEngine.open(tmp_path / "plain")
    sharded = SearchEngine.open(tmp_path / "sharded")
    category = products[0].category
    filters = [None, Filters(category=category), Filters(min_price=100.0, max_price=3000.0)]
    assert compare(plain, sharded, DEMO_QUERIES, filters, k=100) > 0


def test_rebuild_publishes_a_new_generation_and_collects_the_old_shards(tmp_path, products):
    target = tmp_path / "sharded"
    build_sharded_index(products, target, pool=LocalPool(None), shards=2)
    first = ShardedManifest.read(target)
    build_sharded_index(products[:6], target, pool=LocalPool(None), shards=3)
    second = ShardedManifest.read(target)
    assert second.generation == first.generation + 1 and second.products == 6
    on_disk = {f"shards/{p.name}" for p in (target / "shards").iterdir()}
    assert {s["path"] for s in second.shards} <= on_disk
    assert SearchEngine.open(target).search("dress").hits is not None


def test_damage_is_refused_with_a_message(tmp_path, products):
    target = tmp_path / "sharded"
    build_sharded_index(products, target, pool=LocalPool(None), shards=2)
    manifest = ShardedManifest.read(target)
    stats_file = target / manifest.bm25_stats["doc_freq"]
    data = bytearray(stats_file.read_bytes())
    data[-1] ^= 1
    stats_file.write_bytes(bytes(data))
    with pytest.raises(IndexLoadError, match="does not match its checksum"):
        SearchEngine.open(target)


def test_a_shard_from_another_build_is_refused(tmp_path, products):
    target = tmp_path / "sharded"
    build_sharded_index(products, target, pool=LocalPool(None), shards=2)
    manifest = ShardedManifest.read(target)
    # A valid index manifest, but another shard's: the sharded manifest pins each one.
    first, second = (target / s["path"] / "manifest.json" for s in manifest.shards)
    first.write_bytes(second.read_bytes())
    with pytest.raises(IndexLoadError, match="not the one its sharded manifest records"):
        SearchEngine.open(target)


def test_bad_requests_are_refused(tmp_path, products):
    with pytest.raises(SearchError, match="--shards must be at least 1"):
        build_sharded_index(products, tmp_path / "x", pool=LocalPool(None), shards=0)
    build_index(products, tmp_path / "plain", encoder=None)
    with pytest.raises(SearchError, match="holds an unsharded index"):
        build_sharded_index(products, tmp_path / "plain", pool=LocalPool(None), shards=2)
    build_sharded_index(products, tmp_path / "sharded", pool=LocalPool(None), shards=2)
    from shopsearch.index.update import update_index

    with pytest.raises(IndexLoadError, match="is a sharded index"):
        update_index(tmp_path / "sharded", upserts=products[:1])
