"""LambdaMART on tiny fixtures: a known ordering is learned, the text model round-trips, bad
model folders are refused with a message."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shopsearch.errors import SearchError
from shopsearch.ltr.features import FEATURES
from shopsearch.ltr.model import MODEL_FILE, Group, LTRModel, LTRParams, train_lambdamart

PARAMS = LTRParams(rounds=40, min_data_in_leaf=1, num_leaves=4, num_threads=1, learning_rate=0.3)
SIGNAL = FEATURES.index("title_matched_share")


def group(rng, n=8, qid="q"):
    """Random features; the relevance is a step function of one column."""
    x = rng.random((n, len(FEATURES)))
    labels = np.digitize(x[:, SIGNAL], [0.33, 0.66]).astype(np.int64)
    return Group(x, labels, query_id=qid)


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(0)
    return train_lambdamart([group(rng, qid=f"q{i}") for i in range(40)], params=PARAMS)


def test_reproduces_a_known_ordering(model):
    rng = np.random.default_rng(1)
    x = rng.random((6, len(FEATURES)))
    x[:, SIGNAL] = [0.1, 0.9, 0.5, 0.7, 0.2, 0.95]
    order = np.argsort(-model.predict(x), kind="stable")
    grades = np.digitize(x[order, SIGNAL], [0.33, 0.66])
    assert list(grades) == sorted(grades, reverse=True)  # every grade above the lower ones
    gains = model.importances()
    assert max(gains, key=gains.get) == "title_matched_share"


def test_round_trip_is_plain_text_without_pickle(model, tmp_path):
    folder = model.save(tmp_path / "m")
    text = (folder / MODEL_FILE).read_text(encoding="utf-8")
    assert text.startswith("tree\n") and "feature_names=" in text
    info = json.loads((folder / "ltr.json").read_text(encoding="utf-8"))
    assert info["features"] == list(FEATURES) and set(info["importances"]) == set(FEATURES)
    loaded = LTRModel.load(folder)
    x = np.random.default_rng(2).random((5, len(FEATURES)))
    assert np.array_equal(loaded.predict(x), model.predict(x))
    assert not list(folder.glob("*.pkl")) and not list(folder.glob("*.pickle"))


def test_training_is_repeatable():
    rng = np.random.default_rng(0)
    groups = [group(rng, qid=f"q{i}") for i in range(20)]
    x = np.random.default_rng(3).random((4, len(FEATURES)))
    a = train_lambdamart(groups, params=PARAMS).predict(x)
    b = train_lambdamart(groups, params=PARAMS).predict(x)
    assert np.array_equal(a, b)


def test_early_stopping_keeps_the_best_round():
    rng = np.random.default_rng(0)
    train = [group(rng, qid=f"t{i}") for i in range(30)]
    valid = [group(rng, qid=f"v{i}") for i in range(5)]
    model = train_lambdamart(
        train, valid, LTRParams(rounds=200, min_data_in_leaf=1, early_stopping=5, num_threads=1)
    )
    assert model.info["best_iteration"] <= 200
    assert model.booster.num_trees() == model.info["best_iteration"]
    assert 0.0 < model.info["valid_ndcg@10"] <= 1.0


def test_positions_are_passed_for_click_groups():
    rng = np.random.default_rng(0)
    groups = []
    for i in range(30):
        g = group(rng, qid=f"s{i}")
        groups.append(Group(g.features, np.minimum(g.labels, 1), np.arange(1, 9), f"s{i}"))
    model = train_lambdamart(groups, params=PARAMS)
    assert model.booster.num_trees() > 0


def test_bad_examples_and_models_are_refused(model, tmp_path):
    with pytest.raises(ValueError, match="features .* and labels .* do not match"):
        Group(np.zeros((3, len(FEATURES))), np.zeros(2, dtype=np.int64), query_id="q1")
    flat = Group(np.zeros((3, len(FEATURES))), np.zeros(3, dtype=np.int64))
    with pytest.raises(SearchError, match="same label"):
        train_lambdamart([flat], params=PARAMS)
    with pytest.raises(ValueError, match="takes 28 features"):
        model.predict(np.zeros((2, 3)))
    with pytest.raises(SearchError, match="not a learning-to-rank model"):
        LTRModel.load(tmp_path)
    folder = model.save(tmp_path / "m")
    info = json.loads((folder / "ltr.json").read_text())
    (folder / "ltr.json").write_text(json.dumps({**info, "features": ["bm25"]}))
    with pytest.raises(SearchError, match="uses the features"):
        LTRModel.load(folder)
    (folder / "ltr.json").write_text(json.dumps(info))
    (folder / MODEL_FILE).write_text("not a model")
    with pytest.raises(SearchError, match="model.txt is damaged"):
        LTRModel.load(folder)
    with pytest.raises(ValueError, match="learning_rate"):
        LTRParams(learning_rate=0)
