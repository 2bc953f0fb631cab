"""The engine's one pipeline over the fixture catalogue with the fake keyword encoder: stages,
filters, rerank and blend, and the property everything rests on — the served ranking is the
benchmarked one whatever k is asked for."""

from __future__ import annotations

import numpy as np
import pytest

from shopsearch.engine import SearchEngine
from shopsearch.errors import SearchError
from shopsearch.rerank.blend import BlendConfig
from shopsearch.retrieval.base import Reranker, Retriever
from shopsearch.retrieval.filters import Filters
from shopsearch.retrieval.fusion import FusionConfig


class LengthReranker:
    """Prefers shorter product texts: logit = -len / 10, probability its sigmoid."""

    name = "length"
    calibrated = True
    max_length = 32

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def logits(self, query, texts):
        self.calls.append((query, len(texts)))
        return np.array([-len(t) / 10.0 for t in texts])

    def probabilities(self, logits):
        return 1.0 / (1.0 + np.exp(-np.asarray(logits)))


def ids(hits):
    return [h.product_id for h in hits]


@pytest.fixture
def convex_engine(built_index, keyword_encoder):
    from shopsearch.index.store import load_index

    return SearchEngine(
        load_index(built_index),
        encoder=keyword_encoder,
        depth=4,
        fusion=FusionConfig(method="convex", alpha=0.5, normalization="minmax"),
    )


def test_every_stage_implements_the_retriever_interface(engine, built_index, keyword_encoder):
    from shopsearch.index.store import load_index

    assert all(isinstance(engine.stage(s), Retriever) for s in ("bm25", "dense", "hybrid"))
    assert isinstance(LengthReranker(), Reranker)
    reranked = SearchEngine(
        load_index(built_index), encoder=keyword_encoder, reranker=LengthReranker()
    )
    assert list(reranked.stages) == ["bm25", "dense", "hybrid", "rerank"]
    assert reranked.final_stage == "rerank" and engine.final_stage == "hybrid"
    with pytest.raises(SearchError, match="no reranker"):
        engine.stage("rerank")
    with pytest.raises(SearchError, match="unknown stage"):
        engine.stage("magic")


def test_chinese_query_finds_summer_dresses_first(engine):
    result = engine.search("夏季连衣裙", k=5)
    assert ids(result.hits)[0] == "p01"
    # The English summer dress has no Chinese term in common: only the dense tower finds it.
    assert "p02" in ids(result.hits)
    assert "p02" in ids(engine.stage("dense").search(["夏季连衣裙"], 2)[0])
    assert "p02" not in ids(engine.stage("bm25").search(["夏季连衣裙"], 12)[0])
    assert {"bm25", "dense", "fused"} <= set(result.hits[0].scores)


def test_english_query_finds_beds(engine):
    result = engine.search("king poster bed", k=3)
    assert ids(result.hits)[0] == "p05"
    assert set(ids(result.hits)) <= {"p05", "p06", "p07", "p08", "p12"}


@pytest.mark.parametrize("stage", ["bm25", "dense", "hybrid", "rerank"])
def test_served_top_k_is_the_benchmarked_ranking_whatever_k(built_index, keyword_encoder, stage):
    """Min-max fusion normalises over the candidates, so fusing deeper lists for a deeper k
    would change the order: the candidate depth is fixed, and a page of 3 is the first 3 of
    a run of 1000, for every stage."""
    from shopsearch.index.store import load_index

    engine = SearchEngine(
        load_index(built_index),
        encoder=keyword_encoder,
        reranker=LengthReranker(),
        depth=4,
        fusion=FusionConfig(method="convex", normalization="minmax"),
        blend=BlendConfig(weight=0.5, top=3),
    )
    for query in ("bed", "夏季连衣裙", "king duvet cotton"):
        deep = engine.stage(stage).search([query], 1000)[0]
        page = engine.search(query, k=3, stage=stage).hits
        assert [(h.product_id, h.score) for h in page] == [
            (h.product_id, h.score) for h in deep[:3]
        ]
        if stage in ("hybrid", "rerank"):
            assert len(deep) <= 2 * engine.depth


def test_hybrid_fuses_the_candidate_depth_not_k(convex_engine):
    from shopsearch.retrieval.fusion import fuse

    sparse = convex_engine.stage("bm25").search(["bed"], 4)[0]
    dense = convex_engine.stage("dense").search(["bed"], 4)[0]
    expected = fuse(sparse, dense, convex_engine.fusion)
    assert ids(convex_engine.stage("hybrid").search(["bed"], 100)[0]) == ids(expected)


def test_bm25_only_index_serves_bm25_order_as_its_hybrid(tmp_path, products):
    from shopsearch.index.store import build_index, load_index

    build_index(products, tmp_path / "bm25", encoder=None)
    engine = SearchEngine(load_index(tmp_path / "bm25"))
    hybrid = engine.stage("hybrid").search(["bed"], 10)[0]
    bm25 = engine.stage("bm25").search(["bed"], 10)[0]
    assert [(h.product_id, h.score) for h in hybrid] == [(h.product_id, h.score) for h in bm25]
    assert all(h.scores["fused"] == h.scores["bm25"] == h.score for h in hybrid)
    result = engine.search("bed")
    assert any("BM25 only" in note for note in result.notes)


def test_category_and_price_filters_still_return_k(engine):
    result = engine.search("bed", k=2, filters=Filters(category="beds"))
    assert set(ids(result.hits)) == {"p05", "p06"}
    result = engine.search("连衣裙", k=10, filters=Filters(min_price=100, max_price=250))
    assert ids(result.hits) == ["p01", "p11"]
    assert all(100 <= result.products[i].price <= 250 for i in ids(result.hits))
    # A filter that only products without BM25 matches satisfy: dense recall still fills k.
    result = engine.search("夏季连衣裙", k=1, filters=Filters(category="Pet Supplies"))
    assert ids(result.hits) == ["p12"]
    result = engine.search("bed", k=5, filters=Filters(category="no such category"))
    assert result.hits == [] and any("only 0 products" in n for n in result.notes)


def test_filters_validate_price_range():
    with pytest.raises(SearchError, match="above"):
        Filters(min_price=10, max_price=5)


def test_results_say_when_not_reranked(engine):
    result = engine.search("bed", k=3)
    assert not result.reranked
    assert any("not reranked" in note for note in result.notes)


def test_rerank_stage_orders_by_click_probability_and_labels_every_reranked_hit(
    built_index, keyword_encoder
):
    from shopsearch.index.store import load_index

    reranker = LengthReranker()
    engine = SearchEngine(
        load_index(built_index),
        encoder=keyword_encoder,
        reranker=reranker,
        blend=BlendConfig(weight=1.0, top=4),
    )
    fused = engine.stage("hybrid").search(["bed"], 100)[0]
    result = engine.search("bed", k=6)
    assert result.reranked and result.calibrated and result.stage == "rerank"
    assert reranker.calls == [("bed", 4)]  # one pass over the top 4, not over k or the list
    head = result.hits[:4]
    assert set(ids(head)) == set(ids(fused[:4]))
    lengths = [len(engine.product_texts[h.product_id]) for h in head]
    assert lengths == sorted(lengths)  # shortest text = highest click probability first
    for hit in head:
        logit = -len(engine.product_texts[hit.product_id]) / 10.0
        assert hit.scores["click_logit"] == pytest.approx(logit)
        assert hit.scores["click_probability"] == pytest.approx(1 / (1 + np.exp(-logit)))
    # Below the cut: fused order, no click probability, keys below every reranked one.
    assert ids(result.hits[4:]) == ids(fused[4:6])
    assert all("click_probability" not in h.scores for h in result.hits[4:])
    scores = [h.score for h in result.hits]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == len(scores)


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_blended_rerank_keeps_scores_and_ranks_in_step(built_index, keyword_encoder, weight):
    from shopsearch.index.store import load_index

    index = load_index(built_index)
    blended = SearchEngine(
        index,
        encoder=keyword_encoder,
        reranker=LengthReranker(),
        blend=BlendConfig(weight=weight, top=3),
    )
    fused = blended.stage("hybrid").search(["bed"], 12)[0]
    reranked = blended.stage("rerank").search(["bed"], 12)[0]
    scores = [h.score for h in reranked]
    assert scores == sorted(scores, reverse=True)  # the tail scores below every reranked hit
    assert ids(reranked[3:]) == ids(fused[3:])
    assert all("click_probability" in h.scores for h in reranked[:3])
    if weight == 0.0:  # all weight on the fused score: the fused order survives reranking
        assert ids(reranked) == ids(fused)


def test_explain_reports_matched_terms_and_timings(engine):
    result = engine.search("King poster bed", k=3, explain=True)
    assert result.matched_terms["p05"] == ["bed", "king", "poster"]
    assert {"analysis", "bm25", "encode_query", "dense_search", "fusion", "total"} <= set(
        result.timings_ms
    )
    data = result.to_dict()
    assert data["results"][0]["id"] == "p05" and data["results"][0]["matched_terms"]
    assert data["stage"] == "hybrid"


@pytest.mark.parametrize("query", ["", "   \t"])
def test_empty_query_is_an_error(engine, query):
    with pytest.raises(SearchError, match="empty"):
        engine.search(query)


def test_long_emoji_and_mixed_queries_work(engine):
    assert ids(engine.search("连衣裙" * 3400, k=3).hits)[0] in {"p01", "p03"}
    # No BM25 term at all: dense recall alone still answers.
    result = engine.search("🛏️👗😀", k=3)
    assert result.query_terms == [] and len(result.hits) == 3
    assert ids(engine.search("Кровать king 床 ベッド", k=3).hits)[0] in {"p05", "p07", "p08"}


def test_ties_break_by_product_id(tmp_path, keyword_encoder):
    from shopsearch.index.store import build_index, load_index
    from shopsearch.retrieval.types import Product

    # Identical texts tie in BM25 and in dense, whatever order they were catalogued in.
    same = [Product(id=pid, title="oak bed frame") for pid in ("b3", "a9", "b1", "a2")]
    build_index(same, tmp_path / "ties", encoder=keyword_encoder)
    engine = SearchEngine(load_index(tmp_path / "ties"), encoder=keyword_encoder)
    for stage in ("bm25", "dense", "hybrid"):
        assert ids(engine.stage(stage).search(["bed"], 4)[0]) == ["a2", "a9", "b1", "b3"], stage


def test_depth_is_checked(built_index):
    from shopsearch.index.store import load_index

    with pytest.raises(SearchError, match="depth"):
        SearchEngine(load_index(built_index), depth=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        BlendConfig(weight=2.0)
