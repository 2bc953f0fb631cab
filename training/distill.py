"""A smaller reranker by distillation: the fine-tuned cross-encoder as teacher, a student made
of the teacher's embeddings and its first ``layers`` transformer layers (plus its head), trained
to reproduce the teacher's logits (mean squared error) over the engine's own candidate lists.

Why these choices: the student starts from the teacher's lower layers, so it begins close to
the teacher and needs one short epoch rather than a pre-training run (the MS MARCO MiniLM-L2 /
L4 cross-encoders were made the same way); the targets are the teacher's logits on exactly
the (query, candidate) pairs it will rerank when serving, so no label data is needed and every
query of the training split can be used. The student's click probabilities are calibrated to
the teacher's calibrated probabilities (Platt, soft labels), so a shopper sees the same kind of
number from either.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from shopsearch.errors import DataError

logger = logging.getLogger(__name__)


@dataclass
class DistillationConfig:
    layers: int = 2
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    seed: int = 0


@dataclass
class DistillationResult:
    out_dir: Path
    pairs: int
    held_out_pairs: int
    teacher_student_mse_before: float
    teacher_student_mse_after: float
    spearman_median_after: float
    top10_overlap_after: float


def truncate_layers(model: Any, layers: int) -> None:
    """Keep the first ``layers`` transformer layers of a sentence-transformers CrossEncoder
    (BERT or XLM-R), in place, and record it in the config so the folder reloads as such."""
    inner = model.model
    base = getattr(inner, inner.base_model_prefix)
    have = len(base.encoder.layer)
    if not 1 <= layers < have:
        raise DataError(f"the student needs 1 to {have - 1} layers (the teacher has {have})")
    base.encoder.layer = base.encoder.layer[:layers]
    inner.config.num_hidden_layers = layers


def distill_reranker(
    teacher_dir: str | Path,
    lists: Sequence[tuple[str, Sequence[str]]],
    out_dir: str | Path,
    config: DistillationConfig | None = None,
    *,
    progress: bool = True,
) -> DistillationResult:
    """Train a ``config.layers``-layer student of ``teacher_dir`` on the teacher's logits over
    ``lists`` (the last tenth of the lists held out to measure agreement), calibrate it, and
    write it to ``out_dir`` as a reranker folder (``training.json`` says it is distilled)."""
    import torch
    from tqdm.auto import tqdm

    from shopsearch.files import write_folder
    from shopsearch.models.registry import load_cross_encoder
    from shopsearch.rerank.calibration import fit_platt, write_calibration
    from shopsearch.rerank.cross_encoder import CrossEncoderReranker, score_pairs
    from shopsearch.rerank.export import measure_agreement
    from shopsearch.training.common import (
        library_versions,
        make_optimizer,
        optimizer_step,
        seed_everything,
        write_training_json,
    )
    from shopsearch.training.reranker import _pair_logits

    config = config or DistillationConfig()
    lists = [(q, list(t)) for q, t in lists if t]
    if len(lists) < 10:
        raise DataError(f"need candidate lists for at least 10 queries, got {len(lists)}")
    cut = len(lists) - max(1, len(lists) // 10)
    train_lists, held_out = lists[:cut], lists[cut:]
    pairs = [(q, t) for q, texts in train_lists for t in texts]
    held_pairs = [(q, t) for q, texts in held_out for t in texts]

    teacher = CrossEncoderReranker(teacher_dir)
    logger.info("teacher logits for %d pairs", len(pairs) + len(held_pairs))
    targets = teacher.pair_logits(pairs)
    held_targets = teacher.pair_logits(held_pairs)

    seed_everything(config.seed)
    student = load_cross_encoder(str(teacher_dir), max_length=teacher.max_length)
    truncate_layers(student, config.layers)

    def held_out_logits() -> np.ndarray:
        student.model.eval()
        return score_pairs(student, held_pairs, batch_size=64)

    mse_before = float(np.mean((held_out_logits() - held_targets) ** 2))
    steps = math.ceil(len(pairs) / config.batch_size) * config.epochs
    optimizer, scheduler = make_optimizer(
        student, config.learning_rate, config.weight_decay, steps, config.warmup_ratio
    )
    rng = np.random.default_rng(config.seed)
    for epoch in range(1, config.epochs + 1):
        student.model.train()
        order = rng.permutation(len(pairs))
        batches = range(0, len(order), config.batch_size)
        for start in tqdm(batches, desc=f"distil epoch {epoch}", disable=not progress):
            idx = order[start : start + config.batch_size]
            logits = _pair_logits(student, [pairs[i] for i in idx])
            target = torch.tensor(targets[idx], dtype=logits.dtype)
            optimizer_step(
                student, torch.nn.functional.mse_loss(logits, target), optimizer, scheduler
            )
    got = held_out_logits()
    bounds = np.cumsum([len(t) for _, t in held_out])[:-1]
    teacher_probabilities = teacher.probabilities(held_targets)
    agreement = measure_agreement(
        np.split(held_targets, bounds),
        np.split(got, bounds),
        np.split(teacher_probabilities, bounds),
        np.split(teacher_probabilities, bounds),  # the student's are fitted below
    )
    calibrator = (
        fit_platt(
            score_pairs(student, pairs[:20000], batch_size=64),
            teacher.probabilities(targets[:20000]),
        )
        if teacher.calibrator is not None
        else None
    )
    result = DistillationResult(
        out_dir=Path(out_dir),
        pairs=len(pairs),
        held_out_pairs=len(held_pairs),
        teacher_student_mse_before=mse_before,
        teacher_student_mse_after=float(np.mean((got - held_targets) ** 2)),
        spearman_median_after=agreement.spearman_median,
        top10_overlap_after=agreement.top10_overlap,
    )

    def write(folder: Path) -> None:
        student.save(str(folder), create_model_card=False)
        if calibrator is not None:
            write_calibration(folder, calibrator)
        write_training_json(
            folder,
            {
                "kind": "cross-encoder",
                "objective": "distillation: mean squared error to the teacher's logits",
                "base_model": str(teacher_dir),
                "teacher": str(teacher_dir),
                "config": {**asdict(config), "max_length": teacher.max_length},
                "data": {"lists": len(train_lists), "pairs": len(pairs)},
                "agreement": {k: v for k, v in asdict(result).items() if k != "out_dir"},
                "versions": library_versions(),
            },
        )

    write_folder(Path(out_dir), write)
    return result
