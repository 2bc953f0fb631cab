"""Measures written one way (retrieval/units.py) and the analyser options that use it."""

from __future__ import annotations

import pytest

from shopsearch.retrieval.analysis import Analyzer
from shopsearch.retrieval.units import measure_numbers, measure_terms, normalise_measures


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1/2 in. pipe", {"0.5in"}),
        ("1/2 inch pipe", {"0.5in"}),
        ("1/2in pipe", {"0.5in"}),
        ("1-1/2 in. PVC", {"1.5in"}),
        ("1 1/2 inches", {"1.5in"}),
        ("36 in. Vanity", {"36in"}),
        ("36-inch vanity", {"36in"}),
        ('36" vanity', {"36in"}),
        ("Pine 2 X 4, 8 ft.", {"2x4", "8ft"}),
        ("8 feet", {"8ft"}),
        ("5 lbs", {"5lb"}),
        ("5 pounds", {"5lb"}),
        ("1.9 cu. ft. Microwave", {"1.9cuft"}),
        ("faucet in chrome", set()),
        ("4 input", set()),
    ],
)
def test_measure_terms(text, expected):
    assert measure_terms(text) == expected


def test_normalise_measures_gives_the_same_terms_twice():
    once = normalise_measures("house of fara 3/4 in. x 3 in. x 8 ft. mdf")
    assert once.split() == normalise_measures(once).split()


def test_units_option_makes_the_spellings_of_a_measure_one_term():
    units = Analyzer(units=True)
    assert units.tokenize("1/2 in. pipe") == units.tokenize("1/2 inch pipe")
    assert units.tokenize("1/2in pipe") == ["0.5in", "0.5", "pipe"]
    assert units.tokenize("1/2 inch pipe") == units.tokenize("1/2in pipe")
    assert units.tokenize("36-inch vanity") == units.tokenize("36 in vanity")
    assert units.tokenize("2 x 4 stud") == units.tokenize("2x4 stud") == ["2x4", "2", "4", "stud"]
    # Off by default: the analyser of an existing index is unchanged.
    assert Analyzer().tokenize("1/2 in. pipe") == ["1", "2", "pipe"]


def test_analyser_options_come_from_the_manifest_record():
    old = {
        "name": "shopsearch-zh-jieba-search-en-snowball",
        "version": 1,
        "stem": True,
        "stopwords": True,
    }
    assert not Analyzer.from_config(old).units
    assert not Analyzer.from_config(old).fold_traditional
    new = Analyzer(units=True, fold_traditional=True).config()
    assert Analyzer.from_config(new).config() == new


def test_traditional_chinese_is_folded_to_simplified():
    folded = Analyzer(fold_traditional=True)
    assert folded.tokenize("夏季連衣裙 雙人床") == Analyzer().tokenize("夏季连衣裙 双人床")
    assert Analyzer().tokenize("連衣裙") != Analyzer().tokenize("连衣裙")  # the gap it fills


def test_measure_numbers():
    assert measure_numbers("36in") == ["36"]
    assert measure_numbers("2x4") == ["2", "4"]
    assert measure_numbers("0.5in") == ["0.5"]
    assert measure_numbers("vaniti") == [] and measure_numbers("iphone15") == []
