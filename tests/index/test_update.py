"""Updating an index in place: after any sequence of upserts, deletes and compactions it
answers exactly as a fresh build of the final catalogue (BM25 scores to 1e-6, the same ids in
the same order, exact dense results equal), and approximate (HNSW) search never returns a
deleted product."""

from __future__ import annotations

import hashlib
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from shopsearch.engine import SearchEngine
from shopsearch.errors import SearchError
from shopsearch.index.manifest import Manifest
from shopsearch.index.store import build_index, load_index
from shopsearch.index.update import compact_index, update_index
from shopsearch.retrieval.analysis import Analyzer
from shopsearch.retrieval.dense import SegmentedDenseIndex
from shopsearch.retrieval.filters import Filters

CATALOG = Path(__file__).parents[1] / "fixtures" / "catalog.jsonl"
FILTERS = [None, Filters(max_price=150.0), Filters(min_price=100.0, max_price=2000.0)]


@pytest.fixture(scope="module")
def analyzer():
    return Analyzer()  # one jieba dictionary load for the whole module


@pytest.fixture(scope="module")
def pool():
    """The fixture catalogue and every 20th demo product: 132 products, Chinese and English."""
    from shopsearch.demo.catalog import generate_catalog
    from shopsearch.index.catalog import read_catalog

    return read_catalog(CATALOG) + generate_catalog()[::20]


def queries(pool, rng):
    fixed = ["夏季连衣裙", "king poster bed", "iPhone15 手机壳", "cotton", "bed", "冬 裙", "锅"]
    return fixed + [" ".join(rng.choice(pool).title.split()[:2]) for _ in range(25)]


def answers(engine, texts, stages=("bm25", "dense")):
    """Every stage's (id, score) lists for every query under every filter."""
    out = {}
    for stage in stages:
        for i, filters in enumerate(FILTERS):
            hits = engine.stage(stage).search(texts, 10, filters)
            out[stage, i] = [[(h.product_id, h.score) for h in q] for q in hits]
    return out


def assert_same_answers(got, want):
    assert got.keys() == want.keys()
    for key in want:
        for g, w in zip(got[key], want[key]):
            assert [pid for pid, _ in g] == [pid for pid, _ in w], key
            np.testing.assert_allclose(
                [s for _, s in g], [s for _, s in w], rtol=0, atol=1e-6, err_msg=str(key)
            )


def random_changes(rng, live, pool, serial):
    """A random batch: new products, retitled, recategorised, repriced (text unchanged) and
    identical upserts of live ones, and deletions."""
    absent = [p for p in pool if p.id not in live]
    upserts = [p for p in rng.sample(absent, min(len(absent), rng.randint(0, 6)))]
    for pid in rng.sample(sorted(live), min(len(live), rng.randint(0, 6))):
        old = live[pid]
        kind = rng.choice(["title", "category", "price", "same"])
        if kind == "title":
            new = replace(old, title=f"{rng.choice(pool).title} v{serial}")
        elif kind == "category":
            new = replace(old, category=rng.choice(pool).category)
        elif kind == "price":
            new = replace(old, price=round(rng.uniform(1, 3000), 2))
        else:
            new = old
        upserts.append(new)
    chosen = {p.id for p in upserts}
    candidates = sorted(set(live) - chosen)
    deletes = rng.sample(candidates, min(len(candidates) - 1, rng.randint(0, 6)))
    return upserts, deletes


@pytest.mark.parametrize("seed", [0, 1])
def test_random_updates_equal_a_fresh_build(tmp_path, pool, analyzer, keyword_encoder, seed):
    rng = random.Random(seed)
    live = {p.id: p for p in rng.sample(pool, 80)}
    index_dir = tmp_path / "live"
    build_index(list(live.values()), index_dir, encoder=keyword_encoder, analyzer=analyzer)
    texts = queries(pool, rng)
    for step in range(8):
        upserts, deletes = random_changes(rng, live, pool, step)
        summary = update_index(
            index_dir, upserts, deletes, encoder=keyword_encoder, analyzer=analyzer, compact=False
        )
        for p in upserts:
            live[p.id] = p
        for pid in deletes:
            del live[pid]
        assert summary.products == len(live)
        if step % 3 == 2:
            compact_index(index_dir)
        fresh_dir = tmp_path / f"fresh{step}"
        build_index(list(live.values()), fresh_dir, encoder=keyword_encoder, analyzer=analyzer)
        # (Sharing the analyser only saves loading jieba's dictionary per index.)
        updated = replace(load_index(index_dir), analyzer=analyzer)
        fresh = replace(load_index(fresh_dir), analyzer=analyzer)
        assert [p.to_dict() for p in updated.products] == [p.to_dict() for p in fresh.products]
        assert updated.manifest.catalog_sha256 == fresh.manifest.catalog_sha256
        assert set(updated.bm25.vocabulary) == set(fresh.bm25.vocabulary)
        for text in texts:  # every document's score, not only the top 10
            terms = updated.analyzer.tokenize(text)
            np.testing.assert_allclose(
                updated.bm25.score(terms)[0], fresh.bm25.score(terms)[0], rtol=0, atol=1e-6
            )
        assert_same_answers(
            answers(SearchEngine(updated, encoder=keyword_encoder), texts),
            answers(SearchEngine(fresh, encoder=keyword_encoder), texts),
        )
    assert len(Manifest.read(index_dir).segments) >= 1


class HashEncoder:
    """Random but deterministic unit vectors, one per text: neighbourhoods without ties."""

    name = "fake-hash"
    dim = 24

    def _vector(self, text):
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
        v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
        return v / np.linalg.norm(v)

    def encode_queries(self, texts, batch_size=64):
        return np.stack([self._vector(t) for t in texts]).astype(np.float32)

    def encode_documents(self, texts, batch_size=64, show_progress=False):
        return self.encode_queries(texts)


def test_hnsw_never_returns_a_deleted_product_and_keeps_its_recall(tmp_path, pool, analyzer):
    from shopsearch.demo.catalog import generate_catalog

    rng = random.Random(3)
    encoder = HashEncoder()
    catalogue = generate_catalog()[:600]
    live = {p.id: p for p in catalogue[:400]}
    index_dir = tmp_path / "hnsw"
    build_index(
        list(live.values()), index_dir, encoder=encoder, analyzer=analyzer,
        factory="IDMap,HNSW32,Flat",
    )  # fmt: skip
    for step in range(3):
        absent = [p for p in catalogue if p.id not in live]
        upserts = rng.sample(absent, 40) + [
            replace(live[pid], title=live[pid].title + f" edition {step}")
            for pid in rng.sample(sorted(live), 20)
        ]
        deletes = rng.sample(sorted(set(live) - {p.id for p in upserts}), 60)
        update_index(index_dir, upserts, deletes, encoder=encoder, analyzer=analyzer, compact=False)
        live.update({p.id: p for p in upserts})
        for pid in deletes:
            del live[pid]
    index = replace(load_index(index_dir), analyzer=analyzer)
    assert isinstance(index.faiss_index, SegmentedDenseIndex) and len(index.manifest.segments) == 4
    engine = SearchEngine(index, encoder=encoder)
    texts = [p.title for p in rng.sample(list(live.values()), 30)] + ["bed", "锅", "dress"]
    ids = [p.id for p in index.products]
    vectors = encoder.encode_documents([p.text() for p in index.products])
    recall = []
    for filters in (None, Filters(max_price=500.0)):
        allowed = index.filters.mask(filters)
        for text, hits in zip(texts, engine.stage("dense").search(texts, 10, filters)):
            got = [h.product_id for h in hits]
            assert set(got) <= set(live) and len(got) == 10  # never a deleted product
            scores = vectors @ encoder.encode_queries([text])[0]
            if allowed is not None:
                scores = np.where(allowed, scores, -np.inf)
            exact = {ids[r] for r in np.argsort(-scores)[:10]}
            recall.append(len(exact & set(got)) / 10)
    assert np.mean(recall) >= 0.95
    # Compaction merges into one HNSW index over the live rows only.
    compact_index(index_dir)
    merged = load_index(index_dir)
    assert not isinstance(merged.faiss_index, SegmentedDenseIndex)
    assert merged.faiss_index.ntotal == len(live) == len(merged.products)


@pytest.fixture
def engine_after(tmp_path, products, keyword_encoder):
    """The fixture catalogue, then: p05 retitled and repriced, p08 deleted, z01 added."""
    index_dir = tmp_path / "idx"
    build_index(products, index_dir, encoder=keyword_encoder)
    by_id = {p.id: p for p in products}
    summary = update_index(
        index_dir,
        [
            replace(by_id["p05"], title="Zebrawood King Canopy Bed", price=99.0),
            replace(by_id["p02"], price=12.5),  # text unchanged: keeps its vector
            by_id["p03"],  # identical: nothing to do
            replace(by_id["p01"], title="Zebra print summer dress 连衣裙"),
        ]
        + [type(by_id["p01"])(id="z01", title="Walnut zebra bed frame", price=450.0)],
        ["p08", "nope"],
        encoder=keyword_encoder,
    )
    return SearchEngine(load_index(index_dir), encoder=keyword_encoder), summary


def test_update_reports_what_changed(engine_after):
    _, summary = engine_after
    assert summary.added == ["z01"] and summary.replaced == ["p05", "p02", "p01"]
    assert summary.unchanged == ["p03"] and summary.deleted == ["p08"]
    assert summary.not_found == ["nope"]
    # Only changed texts are encoded: p02's price changed, its text did not.
    assert sorted(summary.reencoded) == ["p01", "p05", "z01"]
    assert (summary.generation_before, summary.generation) == (1, 2) and summary.products == 12


def test_a_query_right_after_an_update_sees_it(engine_after):
    engine, _ = engine_after
    for stage in ("bm25", "dense", "hybrid"):
        hits = engine.search("king duvet cotton bed", k=20, stage=stage).hits
        assert "p08" not in [h.product_id for h in hits], stage
    assert engine.search("zebrawood canopy", stage="bm25").hits[0].product_id == "p05"
    cheap_beds = engine.search("bed", k=20, filters=Filters(max_price=100.0), stage="bm25")
    assert "p05" in [h.product_id for h in cheap_beds.hits]  # its new price, 99
    assert engine.search("linen midi", filters=Filters(max_price=20.0)).hits[0].product_id == "p02"
    # The new products and titles are in BM25's vocabulary, the old title is not.
    assert {h.product_id for h in engine.search("zebra", stage="bm25").hits} == {"z01", "p01"}
    assert "p05" not in {h.product_id for h in engine.search("four poster", stage="bm25").hits}


def test_vectors_are_reused_only_when_the_text_is_unchanged(engine_after, keyword_encoder):
    engine, _ = engine_after
    index = engine.index
    stored = index.faiss_index.index.reconstruct_n(0, index.faiss_index.ntotal)
    expected = keyword_encoder.encode_documents([p.text() for p in index.products])
    np.testing.assert_allclose(stored, expected, rtol=1e-6)


def test_bad_updates_are_refused(built_index, products, keyword_encoder):
    with pytest.raises(SearchError, match="both upserted and deleted"):
        update_index(built_index, [products[0]], [products[0].id], encoder=keyword_encoder)
    with pytest.raises(SearchError, match="every product"):
        update_index(built_index, [], [p.id for p in products], encoder=keyword_encoder)
    with pytest.raises(SearchError, match="needs its encoder"):
        update_index(built_index, [replace(products[0], title="new words")], [])
    with pytest.raises(SearchError, match="built with model 'fake-keyword'"):
        update_index(
            built_index, [replace(products[0], title="new words")], [], encoder=HashEncoder()
        )
    assert Manifest.read(built_index).generation == 1  # nothing was published


def test_nothing_to_change_publishes_nothing(built_index, products, keyword_encoder):
    summary = update_index(built_index, products[:3], ["absent"], encoder=keyword_encoder)
    assert summary.generation == summary.generation_before == 1
    assert summary.unchanged == [p.id for p in products[:3]] and summary.not_found == ["absent"]


def test_compaction_starts_by_itself_past_a_share_of_deleted_rows(
    built_index, products, keyword_encoder
):
    summary = update_index(built_index, [], ["p01", "p02", "p03"], encoder=keyword_encoder)
    assert summary.compaction is None  # 3 of 12 rows
    summary = update_index(built_index, [], ["p04"], encoder=keyword_encoder)
    assert (
        summary.compaction is not None and "4 of 12 rows are deleted" in summary.compaction.reason
    )
    manifest = Manifest.read(built_index)
    assert len(manifest.segments) == 1 and manifest.segments[0]["deleted"] == 0
    assert manifest.segments[0]["rows"] == manifest.products == 8
    assert compact_index(built_index).compacted is False  # already compact


def test_a_fully_deleted_segment_leaves_the_index(built_index, products, keyword_encoder):
    update_index(
        built_index, [products[0].__class__(id="n1", title="oak bed")], [], encoder=keyword_encoder
    )
    update_index(built_index, [], ["n1"], encoder=keyword_encoder, compact=False)
    manifest = Manifest.read(built_index)
    assert len(manifest.segments) == 1 and manifest.products == 12
