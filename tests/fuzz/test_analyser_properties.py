"""Properties of the text analyser: it never fails on any text, its terms are clean, its
normalisation is idempotent, and a text yields the same terms whether it is a product being
indexed or a query being searched (same function, same configuration, via the manifest)."""

from __future__ import annotations

import string
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shopsearch.index.store import build_index, load_index
from shopsearch.retrieval.analysis import Analyzer
from shopsearch.retrieval.bm25 import BM25Index
from shopsearch.retrieval.filters import FilterIndex
from shopsearch.retrieval.retrievers import BM25Retriever
from shopsearch.retrieval.types import Product

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

ODD = (
    "连衣裙夏季碎花雪纺T恤手机壳的了和"  # CJK (and Chinese stop words)
    "ｉｐｈｏｎｅ１５ＡＢＣ！　"  # full-width forms, ideographic space
    "😀👍🏽\u200b\u200d\ufeff\x00\x07\t\n\r\x85\u2028"  # emoji, zero-width, controls
    "İıßﬁΣσς\u0301\u0338"  # letters whose case or compatibility mapping is special
    ".-_/'1234567890"
)
chars = st.one_of(st.characters(), st.characters(categories=["Cs"]), st.sampled_from(ODD))
any_text = st.one_of(
    st.text(chars, max_size=40),
    st.lists(
        st.sampled_from(["iPhone15", "1.8m", "2x4", "beds", "the", "King", "连衣裙", "ＸＬ", "🙂"]),
        max_size=6,
    ).map(" ".join),
)
configs = st.tuples(st.booleans(), st.booleans())  # (stem, stopwords)


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    analyzer = Analyzer()
    analyzer.tokenize("预热 warm-up")  # loads jieba's dictionary (seconds) and the stemmer
    return analyzer


@pytest.fixture(scope="module")
def analyzers(analyzer: Analyzer) -> dict[tuple[bool, bool], Analyzer]:
    """One analyser of each configuration, by ``(stem, stopwords)``; all but the default one
    share ``analyzer``'s jieba (configuration does not reach jieba), the default one has its
    own, so that determinism is checked across two jieba instances."""
    out = {}
    for stem in (False, True):
        for stopwords in (False, True):
            out[stem, stopwords] = other = Analyzer(stem=stem, stopwords=stopwords)
            if (stem, stopwords) != (True, True):
                other._jieba = analyzer._jieba
    out[True, True].tokenize("预热 warm-up")
    return out


def normalise(text: str) -> str:
    """The normalisation the analyser documents: NFKC, then lower case."""
    return unicodedata.normalize("NFKC", text).lower()


@FUZZ
@given(text=any_text)
@example(text="\ud800 unpaired surrogate")
@example(text="连衣裙" * 2000)
def test_tokenize_never_fails_and_terms_are_clean(analyzer, text):
    terms = analyzer.tokenize(text)
    assert isinstance(terms, list)
    for term in terms:
        assert isinstance(term, str) and term
        assert not any(c.isspace() for c in term), term
        assert normalise(term) == term, term


@FUZZ
@given(text=any_text)
def test_tokenize_is_deterministic(analyzer, analyzers, text):
    terms = analyzer.tokenize(text)
    assert analyzer.tokenize(text) == terms
    assert analyzers[True, True].tokenize(text) == terms  # another instance, its own jieba
    assert analyzer.tokenize_many([text, text]) == [terms, terms]


@FUZZ
@given(text=any_text)
@example(text="ǅungla ΟΔΟΣ ﬁle")
def test_normalisation_is_idempotent(analyzer, text):
    once = normalise(text)
    assert normalise(once) == once
    assert analyzer.tokenize(once) == analyzer.tokenize(text)


ascii_text = st.text(string.ascii_letters + string.digits + " .-/", max_size=30)


def full_width(text: str) -> str:
    return "".join(
        "\u3000" if c == " " else chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text
    )


@FUZZ
@given(text=ascii_text)
def test_full_width_and_upper_case_give_the_same_terms(analyzer, text):
    terms = analyzer.tokenize(text)
    assert analyzer.tokenize(full_width(text)) == terms
    assert analyzer.tokenize(text.upper()) == terms


# Words made of letters and digits only, kept apart by a separator that is not a letter, a
# digit or a point (a point between digits is part of a number, e.g. 1.8m).
latin_words = st.text(st.characters(categories=["Lu", "Ll", "Nd"], max_codepoint=0x2FF), max_size=8)
separators = st.sampled_from([" ", ",", "/", "-", ";", "|", "(", ")", "\t", "\u3000"])


@FUZZ
@given(words=st.lists(latin_words, min_size=1, max_size=5), sep=separators)
def test_terms_of_separated_words_do_not_depend_on_their_neighbours(analyzer, words, sep):
    assert analyzer.tokenize(sep.join(words)) == [t for w in words for t in analyzer.tokenize(w)]


@pytest.mark.xfail(
    strict=True,
    reason="str.lower() is context-sensitive for Greek capital sigma: before an apostrophe or "
    "a point followed by a letter it stays σ, at the end of a word it becomes ς, so a word "
    "is analysed differently in a product and in a query. Fixing it (casefold) changes terms "
    "and needs an analyser version bump and a rebuild of every index.",
)
def test_a_greek_word_has_the_same_terms_before_punctuation(analyzer):
    assert analyzer.tokenize("ΟΔΟΣ'ΑΘΗΝΑ")[0] == analyzer.tokenize("ΟΔΟΣ")[0]


# ------------------------------------------------------------------ index time == query time

product_texts = any_text.map(str.strip).filter(bool)


@FUZZ
@given(texts=st.lists(product_texts, min_size=1, max_size=6), config=configs)
def test_a_query_equal_to_a_product_text_matches_all_its_terms(analyzers, texts, config):
    analyzer = analyzers[config]
    products = [Product(id=f"p{i}", title=t) for i, t in enumerate(texts)]
    bm25 = BM25Index.build(analyzer.tokenize_many([p.text() for p in products]))
    retriever = BM25Retriever(bm25, analyzer, [p.id for p in products], FilterIndex(products))
    for product in products:
        query_terms = retriever.analyse(product.title)
        assert query_terms == analyzer.tokenize(product.text())  # no back-off: all known
        assert set(query_terms) <= set(bm25.vocabulary)
        if query_terms:
            hits = retriever.search([product.title], k=len(products))[0]
            assert product.id in [h.product_id for h in hits]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("analyser")


# The reader refuses lone surrogates (tests/fuzz/test_readers_fuzz.py), so no product has one.
stored_texts = st.text(st.one_of(st.characters(exclude_categories=["Cs"]), st.sampled_from(ODD)))


@settings(FUZZ, max_examples=6)
@given(
    texts=st.lists(stored_texts.map(str.strip).filter(bool), min_size=1, max_size=4),
    config=configs,
)
def test_a_loaded_index_analyses_queries_as_its_products_were(analyzers, workdir, texts, config):
    built_with = analyzers[config]
    products = [Product(id=f"p{i}", title=t) for i, t in enumerate(texts)]
    build_index(products, workdir / "index", encoder=None, analyzer=built_with)
    index = load_index(workdir / "index")
    assert index.analyzer.config() == built_with.config()
    retriever = BM25Retriever(
        index.bm25, index.analyzer, [p.id for p in index.products], index.filters
    )
    for product in index.products:
        assert retriever.analyse(product.title) == built_with.tokenize(product.text())
