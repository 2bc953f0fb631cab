import numpy as np
import pytest

from shopsearch.retrieval.fusion import (
    FusionConfig,
    convex_combination,
    fuse,
    normalize_scores,
    reciprocal_rank_fusion,
)
from shopsearch.retrieval.types import Hit


def hits(*pairs, stage="s"):
    return [Hit(pid, score, {stage: score}) for pid, score in pairs]


def test_rrf_worked_by_hand():
    a = hits(("x", 9.0), ("y", 5.0))
    b = hits(("y", 0.9), ("z", 0.8))
    fused = reciprocal_rank_fusion([a, b], k=60)
    scores = {h.product_id: h.score for h in fused}
    assert scores["y"] == pytest.approx(1 / 62 + 1 / 61)
    assert scores["x"] == pytest.approx(1 / 61)
    assert scores["z"] == pytest.approx(1 / 62)
    assert [h.product_id for h in fused] == ["y", "x", "z"]


def test_rrf_weights_and_ties_break_by_id():
    a = hits(("b", 1.0))
    b = hits(("a", 1.0))
    assert [h.product_id for h in reciprocal_rank_fusion([a, b])] == ["a", "b"]
    weighted = reciprocal_rank_fusion([a, b], weights=[2.0, 1.0])
    assert [h.product_id for h in weighted] == ["b", "a"]


def test_rrf_with_one_empty_list_keeps_the_other_order():
    a = hits(("p", 3.0), ("q", 2.0), ("r", 1.0))
    assert [h.product_id for h in reciprocal_rank_fusion([a, []])] == ["p", "q", "r"]
    assert reciprocal_rank_fusion([[], []]) == []


def test_rrf_rejects_mismatched_weights():
    with pytest.raises(ValueError, match="weights"):
        reciprocal_rank_fusion([[], []], weights=[1.0])


def test_normalize_constant_and_single_scores():
    assert list(normalize_scores(np.array([3.0, 3.0]), "minmax")) == [1.0, 1.0]
    assert list(normalize_scores(np.array([3.0]), "zscore")) == [0.0]
    np.testing.assert_allclose(normalize_scores(np.array([1.0, 2.0, 3.0]), "minmax"), [0, 0.5, 1])
    with pytest.raises(ValueError, match="normalisation"):
        normalize_scores(np.array([1.0]), "rank")


def test_convex_worked_by_hand():
    sparse = hits(("a", 10.0), ("b", 5.0), ("c", 0.0), stage="bm25")
    dense = hits(("c", 0.9), ("b", 0.5), stage="dense")
    fused = {h.product_id: h.score for h in convex_combination(sparse, dense, alpha=0.5)}
    # sparse minmax: a 1, b .5, c 0 ; dense minmax: c 1, b 0, a missing -> floor 0
    assert fused == pytest.approx({"a": 0.5, "b": 0.25, "c": 0.5})
    ordered = convex_combination(sparse, dense, alpha=0.5)
    assert [h.product_id for h in ordered] == ["a", "c", "b"]
    assert ordered[0].scores["bm25"] == 10.0 and ordered[1].scores["dense"] == 0.9


def test_convex_with_empty_dense_list_and_bad_alpha():
    sparse = hits(("a", 2.0), ("b", 1.0))
    assert [h.product_id for h in convex_combination(sparse, [], alpha=0.3)] == ["a", "b"]
    with pytest.raises(ValueError, match="alpha"):
        convex_combination(sparse, [], alpha=1.5)


def test_fuse_dispatch_and_config_round_trip():
    config = FusionConfig(method="convex", alpha=0.7, normalization="zscore")
    assert FusionConfig.from_dict(config.to_dict()) == config
    assert fuse(hits(("a", 1.0)), [], config)[0].product_id == "a"
    with pytest.raises(ValueError, match="fusion method"):
        fuse([], [], FusionConfig(method="sum"))  # type: ignore[arg-type]
