"""Distillation: a 2-layer student of a cross-encoder moves towards the teacher's logits and is
written as a reranker folder that reloads with its layers, calibration and record."""

from __future__ import annotations

import json

import pytest

from shopsearch.errors import DataError

TEXTS = [
    "Cal King Poster Bed in Cherry",
    "夏季 碎花 连衣裙 女 红色",
    "1/2 in. x 10 ft. PVC Pipe",
    "Stainless Steel Refrigerator",
    "Cordless Drill 18-Volt",
    "Queen Platform Bed",
    "男士 冬季 羽绒服",
    "Garden Hose 50 ft.",
]
QUERIES = ["king bed", "连衣裙", "pvc pipe", "fridge", "drill", "羽绒服", "hose", "bed frame"]


def test_student_learns_the_teachers_logits(cross_encoder_dir, tmp_path):
    from shopsearch.rerank.cross_encoder import CrossEncoderReranker
    from shopsearch.training.distill import DistillationConfig, distill_reranker

    lists = [(QUERIES[i % 8], TEXTS[i % 8 :] + TEXTS[: i % 8]) for i in range(40)]
    result = distill_reranker(
        cross_encoder_dir,
        lists,
        tmp_path / "student",
        DistillationConfig(layers=2, epochs=2, learning_rate=3e-4, batch_size=16),
        progress=False,
    )
    assert result.teacher_student_mse_after < result.teacher_student_mse_before
    student = CrossEncoderReranker(tmp_path / "student")
    assert student.calibrated and student.max_length == 32
    assert json.loads((tmp_path / "student" / "config.json").read_text())["num_hidden_layers"] == 2
    record = json.loads((tmp_path / "student" / "training.json").read_text())
    assert record["objective"].startswith("distillation") and record["config"]["layers"] == 2


def test_distillation_refuses_bad_requests(cross_encoder_dir, tmp_path):
    from shopsearch.training.distill import DistillationConfig, distill_reranker

    with pytest.raises(DataError, match="at least 10 queries"):
        distill_reranker(cross_encoder_dir, [("q", TEXTS)] * 3, tmp_path / "a", progress=False)
    with pytest.raises(DataError, match="1 to 5 layers"):
        distill_reranker(
            cross_encoder_dir,
            [("q", TEXTS)] * 10,
            tmp_path / "b",
            DistillationConfig(layers=6),
            progress=False,
        )
