import pytest

from shopsearch.engine import Filters, SearchEngine
from shopsearch.errors import SearchError
from shopsearch.retrieval.types import Hit, sort_hits


class LengthReranker:
    """Prefers shorter product texts; a probability in (0, 1)."""

    calibrated = True

    def rerank(self, query, hits, texts):
        return sort_hits([Hit(h.product_id, 1 / (1 + len(t)), {**h.scores,
                          "click_probability": 1 / (1 + len(t))}) for h, t in zip(hits, texts)])


def ids(result):
    return [h.product_id for h in result.hits]


def test_chinese_query_finds_summer_dresses_first(engine):
    result = engine.search("夏季连衣裙", k=5)
    assert ids(result)[0] == "p01"
    # The English summer dress has no Chinese term in common: only the dense tower finds it.
    assert "p02" in ids(result)
    assert "p02" in [h.product_id for h in engine.dense_search(["夏季连衣裙"], 2)[0]]
    assert "p02" not in [h.product_id for h in engine.bm25_search(["夏季连衣裙"], 12)[0]]
    top = result.hits[0]
    assert {"bm25", "dense", "fused"} <= set(top.scores)


def test_english_query_finds_beds(engine):
    result = engine.search("king poster bed", k=3)
    assert ids(result)[0] == "p05"
    assert set(ids(result)) <= {"p05", "p06", "p07", "p08", "p12"}


def test_category_and_price_filters_still_return_k(engine):
    result = engine.search("bed", k=2, filters=Filters(category="beds"))
    assert set(ids(result)) == {"p05", "p06"}
    result = engine.search("连衣裙", k=10, filters=Filters(min_price=100, max_price=250))
    assert ids(result) == ["p01", "p11"] or ids(result)[0] == "p01"
    assert all(100 <= result.products[i].price <= 250 for i in ids(result))
    # A filter that only products without BM25 matches satisfy: dense recall still fills k.
    result = engine.search("夏季连衣裙", k=1, filters=Filters(category="Pet Supplies"))
    assert ids(result) == ["p12"]


def test_filters_validate_price_range():
    with pytest.raises(SearchError, match="above"):
        Filters(min_price=10, max_price=5)


def test_results_say_when_not_reranked(engine):
    result = engine.search("bed", k=3)
    assert not result.reranked
    assert any("not reranked" in note for note in result.notes)


def test_reranker_rescores_the_top_candidates(built_index, keyword_encoder):
    from shopsearch.index.store import load_index

    engine = SearchEngine(load_index(built_index), encoder=keyword_encoder,
                          reranker=LengthReranker(), rerank_top=50)
    result = engine.search("bed", k=5)
    assert result.reranked and result.calibrated
    probs = [h.scores["click_probability"] for h in result.hits]
    assert probs == sorted(probs, reverse=True) and all(0 < p < 1 for p in probs)


def test_explain_reports_matched_terms_and_timings(engine):
    result = engine.search("King poster bed", k=3, explain=True)
    assert result.matched_terms["p05"] == ["bed", "king", "poster"]
    assert {"analysis", "bm25", "encode_query", "dense_search", "fusion", "total"} <= set(
        result.timings_ms)
    data = result.to_dict()
    assert data["results"][0]["id"] == "p05" and data["results"][0]["matched_terms"]


@pytest.mark.parametrize("query", ["", "   \t"])
def test_empty_query_is_an_error(engine, query):
    with pytest.raises(SearchError, match="empty"):
        engine.search(query)


@pytest.mark.parametrize("query", ["连衣裙" * 3400, "🛏️👗😀", "Кровать king 床 ベッド"],
                         ids=["10k-chars", "emoji", "mixed-scripts"])
def test_long_emoji_and_mixed_queries_work(engine, query):
    engine.search(query, k=3)


def test_deterministic_ties(engine):
    assert ids(engine.search("bed", k=12)) == ids(engine.search("bed", k=12))


def test_stage_retrievers_answer_batches(engine):
    for stage in ("bm25", "dense", "hybrid"):
        results = engine.stage(stage).search(["bed", "连衣裙"], k=4)
        assert len(results) == 2 and all(len(r) <= 4 for r in results)
        assert results[0][0].product_id in {"p05", "p06", "p07", "p12", "p08"}
    with pytest.raises(SearchError, match="no reranker"):
        engine.stage("rerank")
    with pytest.raises(SearchError, match="unknown stage"):
        engine.stage("magic")


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_blended_rerank_keeps_scores_and_ranks_in_step(built_index, keyword_encoder, weight):
    from shopsearch.index.store import load_index

    index = load_index(built_index)
    plain = SearchEngine(index, encoder=keyword_encoder)
    blended = SearchEngine(index, encoder=keyword_encoder, reranker=LengthReranker(),
                           rerank_top=3, rerank_weight=weight)
    fused = plain.hybrid_search(["bed"], 12)[0]
    reranked = blended.rerank_hits("bed", fused)
    scores = [h.score for h in reranked]
    assert scores == sorted(scores, reverse=True)  # the tail scores below every reranked hit
    assert [h.product_id for h in reranked[3:]] == [h.product_id for h in fused[3:]]
    assert all("click_probability" in h.scores for h in reranked[:3])
    if weight == 0.0:  # all weight on the fused score: the fused order survives reranking
        assert [h.product_id for h in reranked] == [h.product_id for h in fused]


def test_rerank_weight_is_checked(built_index):
    from shopsearch.index.store import load_index

    with pytest.raises(SearchError, match="rerank_weight"):
        SearchEngine(load_index(built_index), rerank_weight=2.0)
