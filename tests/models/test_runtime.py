"""Fast runtimes (ONNX Runtime, OpenVINO) against PyTorch: same vectors, same logits for the
fp32 runtimes; int8 close to fp32 and recalibrated; clear refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shopsearch.errors import DataError, ModelError

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

QUERIES = ["king poster bed", "夏季连衣裙", "1/2 in. pvc pipe x 10 ft", "refrigirator ice maker"]
TITLES = [
    "Cal King Poster Bed in Cherry",
    "夏季 碎花 连衣裙 女 红色",
    "1/2 in. x 10 ft. PVC Schedule 40 Pipe",
    "Stainless Steel French Door Refrigerator with Ice Maker",
    "Cordless Drill 18-Volt",
    "Queen Platform Bed",
    "Charlotte Pipe 3/4 in. PVC",
    "Frigidaire Top Freezer Refrigerator",
    "男士 冬季 羽绒服",
    "Garden Hose 50 ft.",
]


def lists(n: int = 9):
    return [(QUERIES[i % len(QUERIES)], TITLES[i % 3 :] + TITLES[: i % 3]) for i in range(n)]


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_fp32_query_tower_gives_the_torch_vectors(runtime):
    from shopsearch.retrieval.encoders import SentenceTransformerEncoder

    reference = SentenceTransformerEncoder("minilm")
    fast = SentenceTransformerEncoder("minilm", runtime=runtime)
    want = reference.encode_documents(TITLES, batch_size=4)
    got = fast.encode_documents(TITLES, batch_size=4)
    assert np.abs(got - want).max() < 1e-4
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert fast.describe()["runtime"] == runtime


def test_int8_encoder_runtime_is_refused():
    from shopsearch.retrieval.encoders import SentenceTransformerEncoder

    with pytest.raises(ModelError, match="would no longer match"):
        SentenceTransformerEncoder("minilm", runtime="onnx-int8")


@pytest.mark.parametrize(
    ("runtime", "max_logit_error", "min_correlation", "min_overlap"),
    [
        ("onnx", 1e-4, 0.999, 1.0),
        ("openvino", 1e-3, 0.999, 1.0),
        ("openvino-bf16", None, 0.99, 0.8),
        ("onnx-int8", None, 0.9, 0.6),
        # Min-max activation ranges lose the most (README 'Speed'); the test only holds it to
        # being the same model.
        ("onnx-int8-static", None, 0.5, 0.5),
        ("openvino-int8-static", None, 0.9, 0.6),
    ],
)
def test_exported_reranker_agrees_with_torch(
    cross_encoder_dir, tmp_path, runtime, max_logit_error, min_correlation, min_overlap
):
    from shopsearch.rerank.cross_encoder import CrossEncoderReranker
    from shopsearch.rerank.export import export_reranker

    agreement = export_reranker(cross_encoder_dir, runtime, lists(), tmp_path / "out")
    fast, reference = (
        CrossEncoderReranker(tmp_path / "out"),
        CrossEncoderReranker(cross_encoder_dir),
    )
    assert fast.runtime == runtime and reference.runtime == "torch"
    assert fast.max_length == reference.max_length == 32
    pairs = [(q, t) for q in QUERIES for t in TITLES]
    got, want = fast.pair_logits(pairs), reference.pair_logits(pairs)
    if max_logit_error is not None:
        assert np.abs(got - want).max() < max_logit_error
    assert np.corrcoef(got, want)[0, 1] > min_correlation
    assert agreement.lists == 3 and agreement.top10_overlap >= min_overlap
    record = json.loads((tmp_path / "out" / "runtime.json").read_text())
    assert record["runtime"] == runtime and record["agreement"]["pairs"] == 30
    # The click-probability map was refitted for the exported logits.
    assert json.loads((tmp_path / "out" / "calibration.json").read_text())["type"] == "platt"
    assert np.abs(fast.probabilities(got) - reference.probabilities(want)).mean() < 0.05


def test_export_refuses_what_it_cannot_do(cross_encoder_dir, tmp_path):
    from shopsearch.models.runtime import export_model
    from shopsearch.rerank.export import export_reranker

    with pytest.raises(ModelError, match="unknown runtime"):
        export_reranker(cross_encoder_dir, "tensorrt", lists(), tmp_path / "a")
    with pytest.raises(DataError, match="at least 3 queries"):
        export_reranker(cross_encoder_dir, "onnx", lists(2), tmp_path / "b")
    (tmp_path / "c").mkdir()
    with pytest.raises(DataError, match="already exists"):
        export_reranker(cross_encoder_dir, "onnx", lists(), tmp_path / "c")
    with pytest.raises(ModelError, match="needs calibration"):
        export_model(cross_encoder_dir, "onnx-int8-static", tmp_path / "d", "cross-encoder")
    with pytest.raises(ModelError, match="not calibrated"):
        export_model(cross_encoder_dir, "onnx", tmp_path / "e", "cross-encoder", [{}])
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no half-written folder


def test_broken_runtime_record_names_the_file_and_field(cross_encoder_dir, tmp_path):
    import shutil

    from shopsearch.rerank.cross_encoder import CrossEncoderReranker

    folder = tmp_path / "broken"
    shutil.copytree(cross_encoder_dir, folder)
    (folder / "runtime.json").write_text(json.dumps({"runtime": "onnx", "file": "gone.onnx"}))
    with pytest.raises(ModelError, match=r"runtime.json: field 'file'"):
        CrossEncoderReranker(folder)
    (folder / "runtime.json").write_text(json.dumps({"runtime": "cuda"}))
    with pytest.raises(ModelError, match=r"runtime.json: field 'runtime'"):
        CrossEncoderReranker(folder)


def test_installed_export_is_served_with_its_source_blend(
    cross_encoder_dir, tmp_path, built_index, keyword_models
):
    from shopsearch.engine import SearchEngine
    from shopsearch.index.manifest import Manifest
    from shopsearch.index.store import install_reranker, update_manifest
    from shopsearch.rerank.export import export_reranker

    install_reranker(built_index, cross_encoder_dir)
    update_manifest(
        built_index,
        reranker={**Manifest.read(built_index).reranker, "blend": {"weight": 0.5, "top": 7}},
    )
    export_reranker(cross_encoder_dir, "onnx", lists(), tmp_path / "fast")
    source = Manifest.read(built_index).reranker
    install_reranker(
        built_index, tmp_path / "fast", keep={"blend": source["blend"], "runtime": "onnx"}
    )
    engine = SearchEngine.open(built_index)
    assert engine.reranker.runtime == "onnx"
    assert engine.blend.weight == 0.5 and engine.blend.top == 7
    result = engine.search("king poster bed", k=5)
    assert result.reranked and result.stage == engine.final_stage
