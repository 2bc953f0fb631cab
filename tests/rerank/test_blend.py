"""Blending click logits with the fused score: pure functions, by hand."""

import numpy as np
import pytest

from shopsearch.rerank.blend import BlendConfig, blend_scores, standardise


def test_standardise_by_hand_and_constant_input():
    np.testing.assert_allclose(
        standardise(np.array([1.0, 2.0, 3.0])), [-1.224744871, 0.0, 1.224744871], rtol=1e-9
    )
    assert standardise(np.array([5.0, 5.0])).tolist() == [0.0, 0.0]
    assert standardise(np.array([])).size == 0


def test_weight_one_is_click_order_and_weight_zero_is_fused_order():
    logits = np.array([2.0, -1.0, 0.5])
    fused = np.array([0.1, 0.9, 0.6])
    assert np.argsort(-blend_scores(logits, fused, 1.0)).tolist() == [0, 2, 1]
    assert np.argsort(-blend_scores(logits, fused, 0.0)).tolist() == [1, 2, 0]
    # Halfway: z(logits) = [1.225, -1.225, 0], z(fused) = [-1.313, 1.111, 0.202].
    key = blend_scores(logits, fused, 0.5)
    np.testing.assert_allclose(key, [-0.0441, -0.0572, 0.1010], atol=1e-3)
    assert np.argsort(-key).tolist() == [2, 0, 1]


def test_shapes_and_config_are_checked():
    with pytest.raises(ValueError, match="2 logits but 3"):
        blend_scores(np.zeros(2), np.zeros(3), 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        BlendConfig(weight=1.5)
    with pytest.raises(ValueError, match=">= 1"):
        BlendConfig(top=0)
    assert BlendConfig.from_dict({"weight": 0.3, "top": 20, "metric": "x"}) == BlendConfig(0.3, 20)
    assert BlendConfig.from_dict(None) == BlendConfig()


def test_reranker_scores_with_the_pair_length_it_was_trained_on(tmp_path):
    from shopsearch.rerank.cross_encoder import trained_max_length

    assert trained_max_length(tmp_path) is None
    (tmp_path / "training.json").write_text('{"config": {"max_length": 32}}')
    assert trained_max_length(tmp_path) == 32
    (tmp_path / "training.json").write_text('{"config": {"max_length": "long"}}')
    assert trained_max_length(tmp_path) is None
