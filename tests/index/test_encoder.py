"""Loading an index's encoder refuses a model that would not match the stored vectors."""

from __future__ import annotations

import pytest

from shopsearch.errors import IndexLoadError
from shopsearch.index.encoder import load_index_encoder
from shopsearch.index.store import build_index, load_index


def test_the_recorded_model_loads(built_index, keyword_encoder):
    index = load_index(built_index)
    encoder = load_index_encoder(
        index,
        identity=lambda name: {"revision": "test"},
        loader=lambda name, max_length: keyword_encoder,
    )
    assert encoder is keyword_encoder


def test_changed_weights_are_refused(built_index, keyword_encoder):
    index = load_index(built_index)
    with pytest.raises(
        IndexLoadError,
        match="revision test, but that model now resolves to revision other; rebuild",
    ):
        load_index_encoder(
            index,
            identity=lambda name: {"revision": "other"},
            loader=lambda name, max_length: keyword_encoder,
        )


def test_another_dimension_is_refused(built_index, keyword_encoder):
    class Wider:
        dim = keyword_encoder.dim + 1

    index = load_index(built_index)
    with pytest.raises(IndexLoadError, match=f"holds {keyword_encoder.dim}-d vectors"):
        load_index_encoder(
            index,
            identity=lambda name: {"revision": "test"},
            loader=lambda name, max_length: Wider(),
        )


def test_an_index_without_dense_part_has_no_encoder(tmp_path, products):
    build_index(products, tmp_path / "bm25", encoder=None)
    with pytest.raises(IndexLoadError, match="no dense part"):
        load_index_encoder(load_index(tmp_path / "bm25"))
