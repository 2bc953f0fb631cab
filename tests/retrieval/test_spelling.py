"""Spelling correction against an index's vocabulary: by hand, a property, and in the engine."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shopsearch.retrieval.spelling import SpellingCorrector, deletes, edit_distance


def test_deletes_and_distance_by_hand():
    assert deletes("abc", 1) == {"abc", "bc", "ac", "ab"}
    assert deletes("ab", 2) == {"ab", "a", "b", ""}
    assert edit_distance("toliet", "toilet", 2) == 1  # an adjacent swap is one edit
    assert edit_distance("dril", "drill", 2) == 1
    assert edit_distance("faucit", "faucet", 2) == 1
    assert edit_distance("kitten", "sitting", 5) == 3
    assert edit_distance("abcdef", "a", 2) == 3  # past the limit: limit + 1


def test_the_most_frequent_nearest_term_wins():
    speller = SpellingCorrector({"drill": 50, "grill": 5, "drills": 3, "toilet": 9})
    fix = speller.suggest("dril")
    assert fix is not None and (fix.suggestion, fix.distance) == ("drill", 1)
    assert speller.suggest("toliet").suggestion == "toilet"
    assert speller.suggest("drill") is None  # known terms are never corrected
    assert speller.suggest("xyzzyq") is None  # nothing near
    assert speller.suggest("2x4") is None and speller.suggest("dr") is None


def test_distance_two_only_for_long_terms():
    speller = SpellingCorrector({"refrigerator": 10, "shower": 10})
    assert speller.suggest("refrigerater").suggestion == "refrigerator"  # 1 edit
    assert speller.suggest("refrigeratr").suggestion == "refrigerator"
    assert speller.suggest("refigeratr").suggestion == "refrigerator"  # 2 edits, long term
    assert speller.suggest("shwr") is None  # 2 edits on a short term: too risky


def test_correct_keeps_the_original_term_beside_its_correction():
    speller = SpellingCorrector({"cordless": 20, "drill": 30})
    terms, made = speller.correct(["cordles", "drill"])
    assert terms == ["cordles", "cordless", "drill"]
    assert [c.to_dict() for c in made] == [
        {"term": "cordles", "suggestion": "cordless", "distance": 1}
    ]


def test_a_rare_term_is_corrected_only_to_a_much_more_frequent_one():
    speller = SpellingCorrector({"drill": 100, "dril": 1, "grill": 30, "grll": 2}, rare=3)
    assert speller.suggest("dril").suggestion == "drill"  # 100 >= 20 x 1
    assert speller.suggest("grll") is None  # 30 < 20 x 2


_words = st.text(alphabet="abcdeor", min_size=1, max_size=9)


@settings(max_examples=150, deadline=None)
@given(
    vocabulary=st.dictionaries(_words, st.integers(1, 50), min_size=1, max_size=30),
    query=st.lists(_words, max_size=6),
)
def test_never_drops_or_changes_an_in_vocabulary_term(vocabulary, query):
    speller = SpellingCorrector(vocabulary)
    terms, made = speller.correct(query)
    # The output is the query, in order, with each correction right after the unknown term
    # it corrects: no term is dropped or changed, and a known term is never corrected.
    expected, pending = [], list(made)
    for q in query:
        expected.append(q)
        if pending and pending[0].term == q:
            assert q not in vocabulary and pending[0].suggestion in vocabulary
            expected.append(pending.pop(0).suggestion)
    assert terms == expected and not pending


def test_engine_reports_did_you_mean(built_index):
    from shopsearch.engine import SearchEngine
    from shopsearch.index.store import load_index

    index = load_index(built_index)
    plain = SearchEngine(index, cache_size=0)
    spelled = SearchEngine(index, spelling=True, cache_size=0)
    result = spelled.search("cordless dril", k=3, stage="bm25")
    assert result.hits[0].product_id == "p10"
    assert result.corrections == [{"term": "dril", "suggestion": "drill", "distance": 1}]
    assert result.to_dict()["did_you_mean"] == result.corrections
    assert "drill" in result.query_terms and "dril" in result.query_terms
    assert "did_you_mean" not in plain.search("cordless drill", stage="bm25").to_dict()
