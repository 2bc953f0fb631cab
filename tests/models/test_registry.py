"""The model catalogue: names, cache location, loaders, prompts, cross-encoders, identities."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from shopsearch.errors import ModelError
from shopsearch.models import registry


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHOPSEARCH_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert registry.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("SHOPSEARCH_CACHE")
    assert registry.cache_dir() == tmp_path / "xdg" / "shopsearch"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert registry.cache_dir() == tmp_path / "home" / ".cache" / "shopsearch"


def test_list_models_builds_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHOPSEARCH_CACHE", str(tmp_path / "empty"))
    models = {m.name: m for m in registry.list_models()}
    assert list(models) == ["minilm", "e5-small"]
    minilm, e5 = models["minilm"], models["e5-small"]
    assert minilm.ready and Path(minilm.path, "model.safetensors").is_file()
    assert minilm.dim == 384 and minilm.languages == "en" and minilm.query_prompt == ""
    assert e5.path == str(tmp_path / "empty" / "models" / "e5-small")
    assert not e5.ready and e5.size_bytes is None
    assert (e5.query_prompt, e5.document_prompt, e5.licence) == ("query: ", "passage: ", "MIT")
    info = registry.resolve_model("e5-small", build=False)
    assert not info.ready
    assert not (tmp_path / "empty").exists()


def test_e5_small_is_built_on_first_use_into_the_cache(e5_folder: Path, model_cache: Path) -> None:
    assert e5_folder == model_cache / "models" / "e5-small"
    info = registry.resolve_model("e5-small")
    assert info.ready and info.dim == 384 and info.size_bytes > 400_000_000
    assert {m.name: m.ready for m in registry.list_models()}["e5-small"]


def test_resolve_local_folder_reads_dim_and_prompts(e5_folder: Path) -> None:
    info = registry.resolve_model(str(e5_folder))
    assert info.path == str(e5_folder.resolve()) and info.ready
    assert info.dim == 384
    assert (info.query_prompt, info.document_prompt) == ("query: ", "passage: ")
    minilm = registry.resolve_model(registry.resolve_model("minilm").path)
    assert minilm.dim == 384 and minilm.query_prompt == "" and minilm.document_prompt == ""


def test_resolve_hub_id_and_bad_paths(tmp_path: Path) -> None:
    info = registry.resolve_model("shopsearch-tests/no-such-model")
    assert info.path is None and info.name == "shopsearch-tests/no-such-model" and not info.ready
    with pytest.raises(ModelError, match="does not exist"):
        registry.resolve_model(str(tmp_path / "no" / "such" / "folder"))
    with pytest.raises(ModelError, match="does not exist"):
        registry.resolve_model("./not-here")
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="is a file"):
        registry.resolve_model(str(tmp_path / "file.bin"))
    with pytest.raises(ModelError, match="non-empty"):
        registry.resolve_model("  ")


def test_missing_hub_model_offline_is_a_model_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError, match=r"could not be loaded from the hub cache \(offline\?\)"):
        registry.load_bi_encoder("shopsearch-tests/no-such-model")
    with pytest.raises(ModelError, match="hub cache"):
        registry.load_cross_encoder("shopsearch-tests/no-such-model")
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    with pytest.raises(ModelError, match="no config.json and weights"):
        registry.load_bi_encoder(str(empty))


def test_minilm_prompts_are_empty(torch_threads: None) -> None:
    model = registry.load_bi_encoder("minilm")
    assert model.prompts["query"] == "" and model.prompts["document"] == ""
    texts = ["cordless drill 18V", "wood screws"]
    plain = model.encode(texts)
    np.testing.assert_allclose(model.encode(texts, prompt_name="query"), plain, atol=1e-6)
    np.testing.assert_allclose(model.encode(texts, prompt_name="document"), plain, atol=1e-6)


def test_e5_prompts_are_query_and_passage(e5_model) -> None:
    assert e5_model.prompts["query"] == "query: " and e5_model.prompts["document"] == "passage: "
    assert e5_model.default_prompt_name is None
    texts = ["red running shoes", "红色跑步鞋"]
    q = e5_model.encode(texts, prompt_name="query")
    d = e5_model.encode(texts, prompt_name="document")
    np.testing.assert_allclose(q, e5_model.encode(["query: " + t for t in texts]), atol=1e-5)
    np.testing.assert_allclose(d, e5_model.encode(["passage: " + t for t in texts]), atol=1e-5)
    assert np.abs(q - d).max() > 1e-3
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)


PAIRS = [
    ("cordless drill", "DEWALT 20V MAX cordless drill kit"),
    ("red shoes", "Garden hose 50 ft."),
    ("手机壳", "iPhone15 透明手机壳 防摔"),
]


def test_cross_encoder_from_minilm_saves_and_reloads(tmp_path: Path, torch_threads: None) -> None:
    import torch

    torch.manual_seed(0)
    model = registry.load_cross_encoder("minilm", num_labels=1, max_length=128)
    scores = model.predict(PAIRS)
    assert scores.shape == (3,) and np.all((scores > 0) & (scores < 1))
    model.save(str(tmp_path / "ce"))
    again = registry.load_cross_encoder(str(tmp_path / "ce"))
    np.testing.assert_allclose(again.predict(PAIRS), scores, atol=1e-6)
    with pytest.raises(ModelError, match="has 1 output label"):
        registry.load_cross_encoder(str(tmp_path / "ce"), num_labels=3)


def test_cross_encoder_from_e5_keeps_its_tokenizer(
    e5_folder: Path, tmp_path: Path, c_tokenizer, torch_threads: None
) -> None:
    import torch

    torch.manual_seed(0)
    model = registry.load_cross_encoder("e5-small", num_labels=1, max_length=256)
    scores = model.predict(PAIRS)
    model.save(str(tmp_path / "ce-e5"))
    again = registry.load_cross_encoder(str(tmp_path / "ce-e5"))
    np.testing.assert_allclose(again.predict(PAIRS), scores, atol=1e-6)
    # the saved tokenizer still tokenises like e5.c (transformers re-serialises it on save)
    tok = again.tokenizer
    for text in ["Ａ\u0301 ｆｕｌｌ－ｗｉｄｔｈ", "𓀀𓀁 x", "½ ™ café", "iPhone15 手机壳"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids == c_tokenizer(text), text
    pair = tok("a", "b")["input_ids"]
    assert pair[0] == 0 and pair[-1] == 2 and pair.count(2) == 3  # <s> a </s></s> b </s>


def test_model_identity(tmp_path: Path, e5_folder: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"hidden_size": 8}))
    (folder / "model.safetensors").write_bytes(b"weights v1")
    ident = registry.model_identity(str(folder))
    assert ident == {
        "name": str(folder.resolve()),
        "path": str(folder.resolve()),
        "revision": hashlib.sha256(b"weights v1").hexdigest()[:12],
    }
    (folder / "model.safetensors").write_bytes(b"weights v2, retrained")
    assert (
        registry.model_identity(str(folder))["revision"]
        == hashlib.sha256(b"weights v2, retrained").hexdigest()[:12]
    )
    assert registry.model_identity("org/some-model") == {
        "name": "org/some-model",
        "path": None,
        "revision": "org/some-model",
    }
    e5 = registry.model_identity("e5-small")
    assert e5["name"] == "e5-small" and len(e5["revision"]) == 12
    assert registry.model_identity("e5-small") == e5
