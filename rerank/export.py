"""A reranker folder exported to a fast runtime (``models.runtime``), recalibrated, with its
agreement with the PyTorch fp32 model measured on the engine's own candidate lists.

The exported folder is a complete reranker folder (the original's tokenizer, config and
``training.json``) plus the exported model under ``runtime/`` and a ``runtime.json`` naming
the runtime and recording the agreement; ``CrossEncoderReranker`` loads it like any other, so
``install_reranker`` publishes it as the index's next generation like a new model.

Calibration data are the engine's own (query, candidate) lists, split by query: the first
two thirds calibrate (int8 activation ranges, and the click-probability map refitted for the
exported logits: Platt scaling with the fp32 model's calibrated probabilities as soft
labels), the last third only measures agreement, so the reported agreement is on pairs the
export never saw.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from shopsearch.errors import DataError

logger = logging.getLogger(__name__)

#: One query and the product texts the engine would rerank for it, in first-stage order.
CandidateList = tuple[str, Sequence[str]]


@dataclass
class Agreement:
    """How an exported reranker orders held-out candidate lists compared with fp32 PyTorch.

    ``top10_overlap``: mean share of fp32's top 10 that the export also puts in its top 10;
    ``top10_same_order``: share of lists whose top 10 is identical in order;
    ``spearman_median``: median over lists of Spearman's rho of the two score vectors;
    ``logit_mae``: mean absolute logit difference; ``probability_mae``: mean absolute
    difference of the calibrated click probabilities (each with its own calibration)."""

    lists: int
    pairs: int
    top10_overlap: float
    top10_same_order: float
    spearman_median: float
    logit_mae: float
    probability_mae: float


def top_overlap(reference: np.ndarray, other: np.ndarray, k: int = 10) -> tuple[float, bool]:
    """Share of ``reference``'s top ``k`` (by score, ties by position) in ``other``'s top
    ``k``, and whether the two top ``k`` are the same in the same order."""
    ref_top = np.lexsort((np.arange(len(reference)), -reference))[:k]
    other_top = np.lexsort((np.arange(len(other)), -other))[:k]
    if len(ref_top) == 0:
        return 1.0, True
    overlap = len(set(ref_top.tolist()) & set(other_top.tolist())) / len(ref_top)
    return overlap, bool(np.array_equal(ref_top, other_top))


def measure_agreement(
    reference_logits: Sequence[np.ndarray],
    logits: Sequence[np.ndarray],
    reference_probabilities: Sequence[np.ndarray],
    probabilities: Sequence[np.ndarray],
) -> Agreement:
    """Agreement of per-list scores with the reference's (same lists, same order)."""
    from scipy.stats import spearmanr

    overlaps, same, rhos = [], [], []
    for ref, got in zip(reference_logits, logits):
        overlap, identical = top_overlap(ref, got)
        overlaps.append(overlap)
        same.append(identical)
        if len(ref) > 2 and np.ptp(ref) > 0 and np.ptp(got) > 0:
            rhos.append(float(spearmanr(ref, got).statistic))
    flat_ref, flat = np.concatenate(reference_logits), np.concatenate(logits)
    flat_ref_p, flat_p = np.concatenate(reference_probabilities), np.concatenate(probabilities)
    return Agreement(
        lists=len(reference_logits),
        pairs=int(flat.size),
        top10_overlap=float(np.mean(overlaps)),
        top10_same_order=float(np.mean(same)),
        spearman_median=float(np.median(rhos)) if rhos else 1.0,
        logit_mae=float(np.mean(np.abs(flat - flat_ref))),
        probability_mae=float(np.mean(np.abs(flat_p - flat_ref_p))),
    )


def _pairs(lists: Sequence[CandidateList]) -> list[tuple[str, str]]:
    return [(query, text) for query, texts in lists for text in texts]


def _split(values: np.ndarray, lists: Sequence[CandidateList]) -> list[np.ndarray]:
    bounds = np.cumsum([len(texts) for _, texts in lists])[:-1]
    return list(np.split(values, bounds))


def calibration_feeds(
    model_dir: Path, lists: Sequence[CandidateList], max_length: int, batch_size: int = 32
) -> list[dict[str, np.ndarray]]:
    """The tokenised pairs of ``lists`` in serving-sized batches: int8 calibration inputs."""
    from transformers import AutoTokenizer

    from shopsearch.models.runtime import tokenizer_feeds

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    pairs = _pairs(lists)
    feeds = []
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start : start + batch_size]
        encoded = tokenizer(
            [p[0] for p in batch],
            [p[1] for p in batch],
            padding=True,
            truncation="longest_first",
            max_length=max_length,
            return_tensors="np",
        )
        feeds.append(tokenizer_feeds(encoded, tokenizer.model_input_names))
    return feeds


def export_reranker(
    model_dir: str | Path,
    runtime: str,
    lists: Sequence[CandidateList],
    out_dir: str | Path,
) -> Agreement:
    """Export ``model_dir`` (a torch reranker folder) to ``runtime`` in ``out_dir`` (created;
    must not exist), recalibrated on the first two thirds of ``lists``, and return its
    agreement with fp32 on the last third."""
    from shopsearch.models.runtime import RUNTIME_FILE, export_model, read_runtime, runtime_spec
    from shopsearch.rerank.calibration import fit_platt, write_calibration
    from shopsearch.rerank.cross_encoder import CrossEncoderReranker

    spec = runtime_spec(runtime)
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if read_runtime(model_dir) is not None:
        raise DataError(
            f"{model_dir} is already exported; export the PyTorch reranker it came from"
        )
    if out_dir.exists():
        raise DataError(f"{out_dir} already exists; choose a new folder for the export")
    lists = [(q, list(texts)) for q, texts in lists if texts]
    if len(lists) < 3:
        raise DataError(
            f"need candidate lists for at least 3 queries to calibrate and check, got {len(lists)}"
        )
    cut = max(1, (2 * len(lists)) // 3)
    calibrate, held_out = lists[:cut], lists[cut:]

    reference = CrossEncoderReranker(model_dir)
    feeds = (
        calibration_feeds(model_dir, calibrate, reference.max_length)
        if spec.needs_calibration
        else None
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
        exported = export_model(model_dir, runtime, tmp / "runtime", "cross-encoder", feeds)
        record: dict[str, Any] = {
            "runtime": runtime,
            "file": str(exported.relative_to(tmp)),
            "exported_from": str(model_dir),
            "calibration_lists": len(calibrate),
            "calibration_pairs": sum(len(t) for _, t in calibrate),
        }
        (tmp / RUNTIME_FILE).write_text(json.dumps(record, indent=2) + "\n", "utf-8")
        fast = CrossEncoderReranker(tmp)
        if reference.calibrator is not None:
            pairs = _pairs(calibrate)
            target = reference.probabilities(reference.pair_logits(pairs))
            write_calibration(tmp, fit_platt(fast.pair_logits(pairs), target))
            fast = CrossEncoderReranker(tmp)
        held_pairs = _pairs(held_out)
        ref_logits = reference.pair_logits(held_pairs)
        got_logits = fast.pair_logits(held_pairs)
        agreement = measure_agreement(
            _split(ref_logits, held_out),
            _split(got_logits, held_out),
            _split(reference.probabilities(ref_logits), held_out),
            _split(fast.probabilities(got_logits), held_out),
        )
        record["agreement"] = asdict(agreement)
        (tmp / RUNTIME_FILE).write_text(json.dumps(record, indent=2) + "\n", "utf-8")
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return agreement
