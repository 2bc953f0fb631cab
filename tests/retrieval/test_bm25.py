import random

import numpy as np
import pytest
import rank_bm25

from shopsearch.retrieval.analysis import Analyzer
from shopsearch.retrieval.bm25 import BM25Index, BM25Params, backoff_terms


def _random_corpus(seed=0, n=300):
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(40)]
    # Skewed term use so that some terms are in > half the documents (negative idf floor).
    return [
        [rng.choice(vocab[: rng.randint(2, 40)]) for _ in range(rng.randint(1, 15))]
        for _ in range(n)
    ]


@pytest.mark.parametrize("params", [BM25Params(), BM25Params(k1=0.9, b=0.4, epsilon=0.1)])
def test_scores_equal_rank_bm25(params):
    corpus = _random_corpus()
    reference = rank_bm25.BM25Okapi(corpus, k1=params.k1, b=params.b, epsilon=params.epsilon)
    index = BM25Index.build(corpus, params)
    for query in (["w0"], ["w1", "w2", "w1"], ["w39", "absent"], [f"w{i}" for i in range(12)]):
        ours, _ = index.score(query)
        np.testing.assert_allclose(ours, reference.get_scores(query), rtol=1e-5, atol=1e-6)


def test_scores_equal_rank_bm25_on_the_fixture_catalogue(products):
    analyzer = Analyzer()
    corpus = [analyzer.tokenize(p.text()) for p in products]
    reference = rank_bm25.BM25Okapi(corpus)
    index = BM25Index.build(corpus)
    for query in ("夏季连衣裙", "king poster bed", "iPhone15 手机壳"):
        terms = analyzer.tokenize(query)
        np.testing.assert_allclose(
            index.score(terms)[0], reference.get_scores(terms), rtol=1e-5, atol=1e-6
        )


def test_top_k_orders_by_score_then_row_and_skips_non_matching():
    corpus = [["a"], ["a"], ["b"], ["a", "a"], ["c"]]
    index = BM25Index.build(corpus)
    rows, scores = index.top_k(["a"], 10)
    assert list(rows) == [3, 0, 1]  # doc 3 has tf 2; docs 0 and 1 tie and keep row order
    assert scores[1] == scores[2]
    rows, _ = index.top_k(["a"], 2)
    assert list(rows) == [3, 0]


def test_top_k_respects_allowed_mask():
    index = BM25Index.build([["a"], ["a"], ["a", "b"]])
    rows, _ = index.top_k(["a"], 3, allowed=np.array([False, True, True]))
    assert sorted(rows) == [1, 2]


def test_empty_collection_is_rejected():
    with pytest.raises(ValueError, match="empty"):
        BM25Index.build([])


def test_backoff_splits_unknown_chinese_terms_into_known_pieces():
    vocabulary = {"碎花": 0, "裙": 1, "夏季": 2}
    assert backoff_terms(["碎花裙", "夏季"], vocabulary) == ["碎花", "裙", "夏季"]
    assert backoff_terms(["完全未知"], vocabulary) == ["完全未知"]


def test_merged_frequencies_score_as_a_build_of_the_surviving_documents():
    """Segments merged with some documents dropped and the rest renumbered give the scores a
    build of the surviving documents gives, bit for bit, whatever the term numbering."""
    from shopsearch.retrieval.bm25 import TermFrequencies

    corpus = _random_corpus(seed=4, n=120)
    parts, kept = [], []
    rng = random.Random(5)
    for start in (0, 50, 90):
        docs = corpus[start : start + {0: 50, 50: 40, 90: 30}[start]]
        keep = [rng.random() < 0.7 for _ in docs]
        parts.append((docs, keep))
        kept += [d for d, k in zip(docs, keep) if k]
    # The surviving documents in a new order (as segments merge into id order).
    order = list(range(len(kept)))
    rng.shuffle(order)
    position = {old: new for new, old in enumerate(order)}
    next_row, inputs = 0, []
    for docs, keep in parts:
        rows = []
        for k in keep:
            rows.append(position[next_row] if k else -1)
            next_row += k
        inputs.append((TermFrequencies.from_tokens(docs), np.array(rows)))
    merged = BM25Index.from_frequencies(TermFrequencies.merge(inputs, len(kept)))
    fresh = BM25Index.build([kept[old] for old in order])
    assert set(merged.vocabulary) == set(fresh.vocabulary)
    for query in (["w0"], ["w1", "w2", "w1"], [f"w{i}" for i in range(40)]):
        np.testing.assert_array_equal(merged.score(query)[0], fresh.score(query)[0])
