"""LTR features worked out by hand, in English and Chinese, and the measure normaliser."""

from __future__ import annotations

import numpy as np
import pytest

from shopsearch.ltr.features import (
    FEATURES,
    Featurizer,
    ProductView,
    QueryView,
    feature_matrix,
    measures_conflict,
    product_view,
    query_view,
    score_features,
    text_features,
)
from shopsearch.retrieval.analysis import Analyzer
from shopsearch.retrieval.types import Hit, Product


@pytest.fixture(scope="module")
def analyzer():
    return Analyzer()


def test_text_features_by_hand_english():
    query = QueryView(("36in", "vaniti", "white"), frozenset({"36in"}))
    title = ("glacier", "bay", "36in", "vaniti", "white", "marbl")
    product = ProductView(
        title=title,
        text=frozenset(title) | {"bath"},
        brand=frozenset({"glacier", "bay"}),
        category=frozenset({"bath", "vaniti"}),
        measures=frozenset({"36in"}),
        has_brand=True,
    )
    f = text_features(query, product)
    assert f["query_terms"] == 3 and f["title_terms"] == 6
    assert f["matched_share"] == 1.0 and f["title_matched_share"] == 1.0
    assert f["all_in_title"] == 1.0
    # bigrams (36in, vaniti) and (vaniti, white) are both adjacent in the title
    assert f["bigram_matches"] == 2 and f["bigram_share"] == 1.0
    assert f["phrase_in_title"] == 1.0
    assert f["numbers_query"] == 1 and f["numbers_matched"] == 1.0
    assert f["measures_query"] == 1 and f["measures_matched"] == 1.0
    assert f["measures_conflict"] == 0.0
    assert f["brand_match"] == 0.0 and f["has_brand"] == 1.0
    assert f["category_match"] == pytest.approx(1 / 3)


def test_a_product_of_another_size_conflicts(analyzer):
    query = query_view("36 in vanity", analyzer.tokenize("36 in vanity"))
    thirty = product_view(Product("a", "Glacier Bay 30 in. Vanity in White"), analyzer.tokenize)
    inch_and_half = product_view(Product("b", "36 inch Vanity, White"), analyzer.tokenize)
    assert text_features(query, thirty)["measures_conflict"] == 1.0
    assert text_features(query, thirty)["measures_matched"] == 0.0
    # "36 inch" in a title and "36 in" in a query are the same measure, whatever BM25's terms
    assert text_features(query, inch_and_half)["measures_matched"] == 1.0
    assert text_features(query, inch_and_half)["measures_conflict"] == 0.0
    assert measures_conflict(frozenset({"2x4"}), frozenset({"2x6"}))
    assert not measures_conflict(frozenset({"2x4"}), frozenset({"8ft"}))


def test_text_features_chinese(analyzer):
    terms = analyzer.tokenize("夏季连衣裙")
    query = query_view("夏季连衣裙", terms)
    dress = product_view(
        Product("p01", "夏季碎花雪纺连衣裙 女 中长款", brand="花语", category="女装 > 连衣裙"),
        analyzer.tokenize,
    )
    pan = product_view(Product("p11", "不粘锅 炒锅 28cm", category="厨具 > 锅"), analyzer.tokenize)
    f, g = text_features(query, dress), text_features(query, pan)
    assert f["matched_share"] == 1.0 and f["all_in_title"] == 1.0
    assert f["category_match"] == pytest.approx(
        len(set(terms) & set(analyzer.tokenize("女装 > 连衣裙"))) / len(set(terms))
    )
    assert f["category_match"] > 0
    assert g["matched_share"] == 0.0 and g["bigram_matches"] == 0.0
    assert g["numbers_query"] == 0.0


def test_score_features_ranks_and_missing_indicators():
    hits = [
        Hit("a", 3.0, {"bm25": 10.0, "fused": 0.03}),
        Hit("b", 2.0, {"dense": 0.9, "fused": 0.02, "click_logit": 1.5}),
        Hit("c", 1.0, {"bm25": 5.0, "dense": 0.95, "fused": 0.01}),
    ]
    rows = score_features(hits)
    assert [r["input_rank"] for r in rows] == [1, 2, 3]
    assert [r["bm25_rank"] for r in rows] == [1, 0, 2]
    assert [r["bm25_missing"] for r in rows] == [0, 1, 0]
    assert [r["bm25_ratio"] for r in rows] == [1.0, 0.0, 0.5]
    assert [r["dense_rank"] for r in rows] == [0, 2, 1]
    assert [r["dense_missing"] for r in rows] == [1, 0, 0]
    assert [r["fused_rank"] for r in rows] == [1, 2, 3]
    assert [r["click_logit"] for r in rows] == [0.0, 1.5, 0.0]
    assert [r["click_missing"] for r in rows] == [1, 0, 1]


def test_feature_matrix_columns_follow_features(analyzer, products):
    by_id = {p.id: p for p in products}
    featurizer = Featurizer(by_id.__getitem__, analyzer.tokenize)
    hits = [Hit("p10", 5.0, {"bm25": 5.0, "fused": 5.0}), Hit("p05", 1.0, {"bm25": 1.0})]
    matrix = featurizer.matrix("cordless drill", analyzer.tokenize("cordless drill"), hits)
    assert matrix.shape == (2, len(FEATURES)) and matrix.dtype == np.float64
    col = {name: i for i, name in enumerate(FEATURES)}
    assert matrix[0, col["title_matched_share"]] == 1.0
    assert matrix[1, col["title_matched_share"]] == 0.0
    assert matrix[1, col["bm25_ratio"]] == 0.2
    assert featurizer.knows("p10") and not featurizer.knows("nope")
    with pytest.raises(ValueError, match="2 hits but 1 product views"):
        feature_matrix(query_view("x", ["x"]), hits, [featurizer.view("p10")])
