"""Online quality figures: CTR@k and MRR on hand-made logs, and a position-corrected ECE that
is near zero for honest probabilities and large for drifted ones."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shopsearch.serve.quality import online_quality, position_corrected_ece
from shopsearch.training.simulate import true_propensities


def test_ctr_and_mrr_by_hand():
    # r1: clicks at 2 and 4; r2: none; r3: click at 1; r4: click at 7.
    rows = [("r1", 2, 1), ("r1", 4, 1), ("r1", 1, 0), ("r2", 1, 0), ("r3", 1, 1), ("r4", 7, 1)]
    quality = online_quality(
        [r[0] for r in rows],
        np.array([r[1] for r in rows]),
        np.array([r[2] for r in rows]),
        [None] * len(rows),
        true_propensities(10),
    )
    assert quality.requests == 4
    assert quality.ctr == {1: 0.25, 5: 0.5, 10: 0.75}
    assert quality.mrr == pytest.approx((1 / 2 + 0 + 1 + 1 / 7) / 4)
    assert quality.ece is None  # nothing was reranked


def simulate(q, positions, theta, rng):
    return rng.random(q.size) < theta[positions - 1] * q


def test_ece_is_small_for_calibrated_probabilities_and_large_after_drift():
    rng = np.random.default_rng(0)
    n, theta = 200_000, true_propensities(10)
    q = rng.uniform(0.05, 0.95, n)  # what the reranker says: P(click | examined)
    positions = rng.integers(1, 11, n)
    clicked = simulate(q, positions, theta, rng)
    assert position_corrected_ece(q, positions, clicked, theta) < 0.01
    # Without the position correction the same honest model looks badly calibrated...
    assert position_corrected_ece(q, positions, clicked, np.ones(10)) > 0.2
    # ...and a model whose probabilities drifted to twice their truth is caught.
    drifted = np.minimum(q * 2, 1.0)
    assert position_corrected_ece(drifted, positions, clicked, theta) > 0.2


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 1), st.integers(1, 30), st.booleans()),
        min_size=1,
        max_size=200,
    )
)
def test_ece_is_a_finite_non_negative_number(rows):
    q = np.array([r[0] for r in rows])
    positions = np.array([r[1] for r in rows])
    clicked = np.array([r[2] for r in rows])
    ece = position_corrected_ece(q, positions, clicked, true_propensities(10))
    assert ece is not None and np.isfinite(ece) and ece >= 0


def test_bad_propensities_are_refused():
    with pytest.raises(ValueError):
        position_corrected_ece(np.array([0.5]), np.array([1]), np.array([1]), np.array([0.0]))
