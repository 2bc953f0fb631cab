"""Fine-tune the cross-encoder reranker to predict click (or relevance) probability.

The model is a sentence-transformers ``CrossEncoder`` with one output logit per (query, text)
pair. Training minimises binary cross-entropy on that logit against a target in [0, 1] (hard
0/1 clicks or soft graded labels such as ``grade / max_grade``), with one weight per example:
the inverse-propensity (IPW) weight of a logged click, or 1.

Why a small torch loop rather than ``CrossEncoderTrainer``: the trainer's
``BinaryCrossEntropyLoss`` has no per-example weight, and the trainer needs ``datasets`` and
``accelerate``, which this project does not install. The loop below is the standard recipe
(AdamW with decoupled weight decay, linear warm-up then linear decay, gradient clipping at 1.0)
and reuses the library for everything else: ``CrossEncoder.preprocess`` / forward for
tokenisation and scoring, ``CrossEncoder.save`` for the folder, transformers' scheduler.

Conventions:
- Logits are raw (before the sigmoid), scored by ``rerank.cross_encoder.score_pairs``, the
  engine's own inference path; the engine applies its calibrator (temperature / Platt) on
  top to get a click probability.
- The weighted loss is self-normalised: ``sum(w * bce) / sum(w)`` over a batch (SNIPS-style);
  an example of weight 0 therefore has exactly no effect on the batch's loss or gradients.
- Dev metrics: weighted log loss (same formula over the whole dev set) and weighted ROC AUC of
  ``sigmoid(logit)`` with targets binarised at 0.5.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shopsearch.errors import DataError
from shopsearch.files import write_folder
from shopsearch.training.common import (
    EarlyStopper,
    TrainingResult,
    check_out_dir,
    library_versions,
    make_optimizer,
    optimizer_step,
    seed_everything,
    snapshot_state,
    write_training_json,
)

logger = logging.getLogger(__name__)


@dataclass
class RerankerTrainingConfig:
    """Hyper-parameters for :func:`train_cross_encoder`.

    ``weight_decay`` is AdamW's decoupled L2 decay (not applied to biases and LayerNorm).
    ``dropout`` overrides the hidden and attention dropout of the transformer config when set.
    ``early_stopping_patience``: stop after this many epochs in a row without a lower dev log
    loss (None: never stop early). The weights of the best epoch are restored before saving.
    ``eval_every_epoch=False`` evaluates only after the last epoch (no early stopping).
    ``freeze_embeddings`` keeps the word-embedding matrix fixed: for e5-small that is 96M of
    its 118M parameters, so steps are much cheaper on a CPU and small data cannot distort the
    vocabulary.
    """

    epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 3e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    dropout: float | None = None
    max_length: int = 128
    seed: int = 0
    early_stopping_patience: int | None = 1
    eval_every_epoch: bool = True
    freeze_embeddings: bool = False


@dataclass
class PairExample:
    """One training pair: ``label`` is the target probability in [0, 1] (may be soft);
    ``weight`` >= 0 scales its loss (an IPW weight for logged clicks, else 1)."""

    query: str
    text: str
    label: float
    weight: float = 1.0


# --------------------------------------------------------------------------------------------
# Loss and metrics


def weighted_bce_with_logits(logits: Any, labels: Any, weights: Any) -> Any:
    """Self-normalised weighted binary cross-entropy on logits.

    Args:
        logits: float tensor ``(B,)``, raw scores.
        labels: float tensor ``(B,)``, targets in [0, 1].
        weights: float tensor ``(B,)``, >= 0.

    Returns a scalar tensor ``sum(w * bce) / sum(w)``; 0 (still attached to the graph, with
    zero gradients) when every weight is 0.
    """
    import torch.nn.functional as F

    per_example = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")  # (B,)
    total_weight = weights.sum()
    if float(total_weight) <= 0.0:
        return (logits * 0.0).sum()
    return (weights * per_example).sum() / total_weight


def weighted_log_loss(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
    """``sum(w * bce(sigmoid(logit), label)) / sum(w)`` in nats, computed stably from logits."""
    from shopsearch.rerank.calibration import bce_with_logits

    weights = np.asarray(weights, dtype=np.float64)
    if weights.sum() <= 0:
        return float("nan")
    return float((weights * bce_with_logits(logits, labels)).sum() / weights.sum())


def weighted_auc(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
    """Weighted ROC AUC with targets binarised at 0.5; NaN when dev has a single class."""
    from sklearn.metrics import roc_auc_score

    binary = (np.asarray(labels) >= 0.5).astype(int)
    weights = np.asarray(weights, dtype=np.float64)
    kept = weights > 0
    if len(set(binary[kept].tolist())) < 2:
        return float("nan")
    return float(roc_auc_score(binary[kept], np.asarray(logits)[kept], sample_weight=weights[kept]))


def _check_examples(examples: Sequence[PairExample], name: str) -> None:
    for i, ex in enumerate(examples):
        if not (0.0 <= float(ex.label) <= 1.0):
            raise DataError(
                f"label must be in [0, 1], got {ex.label!r}", path=name, line=i + 1, field="label"
            )
        if not (math.isfinite(float(ex.weight)) and float(ex.weight) >= 0.0):
            raise DataError(
                f"weight must be finite and >= 0, got {ex.weight!r}",
                path=name,
                line=i + 1,
                field="weight",
            )


def _pair_logits(model: Any, pairs: Sequence[tuple[str, str]]) -> Any:
    """Forward a batch of pairs with gradients; returns logits ``(B,)``."""
    from sentence_transformers.util import batch_to_device

    features = batch_to_device(model.preprocess(list(pairs)), model.device)
    return model(features)["scores"].view(-1)  # (B, 1) -> (B,)


def train_cross_encoder(
    base_model: str | Path,
    train: Sequence[PairExample],
    dev: Sequence[PairExample],
    out_dir: Path,
    config: RerankerTrainingConfig | None = None,
    *,
    num_labels: int = 1,
    progress: bool = True,
    device: str | None = None,
    overwrite: bool = False,
) -> TrainingResult:
    """Fine-tune a cross-encoder with weighted BCE, early stopping on dev log loss, and save it.

    ``base_model`` may be a cross-encoder, a bi-encoder (sentence-transformers) or a plain BERT
    folder; the last two get a newly initialised one-logit head. Writes ``out_dir`` as a standard
    CrossEncoder folder (``CrossEncoder(out_dir)`` reloads it; its saved activation is the
    sigmoid) plus ``training.json``. An empty ``dev`` disables evaluation and early stopping.
    A non-empty ``out_dir`` is refused before training unless ``overwrite``; the folder is
    written beside it and swapped in at the end.
    """
    import torch
    from tqdm.auto import tqdm

    from shopsearch.models.registry import load_cross_encoder
    from shopsearch.rerank.cross_encoder import score_pairs

    config = config or RerankerTrainingConfig()
    if num_labels != 1:
        raise ValueError(
            "only num_labels=1 is supported: the loss is binary cross-entropy on one logit"
        )
    if not train:
        raise DataError("no training pairs")
    if config.epochs < 1 or config.batch_size < 1:
        raise ValueError("epochs and batch_size must be >= 1")
    _check_examples(train, "train")
    _check_examples(dev, "dev")
    out_dir = check_out_dir(out_dir, overwrite)

    seed_everything(config.seed)
    model = load_cross_encoder(
        str(base_model), max_length=config.max_length, dropout=config.dropout, device=device
    )
    if config.freeze_embeddings:
        model.model.get_input_embeddings().weight.requires_grad_(False)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    optimizer, scheduler = make_optimizer(
        model,
        config.learning_rate,
        config.weight_decay,
        steps_per_epoch * config.epochs,
        config.warmup_ratio,
    )

    dev_pairs = [(ex.query, ex.text) for ex in dev]
    dev_labels = np.array([ex.label for ex in dev], dtype=np.float32)
    dev_weights = np.array([ex.weight for ex in dev], dtype=np.float64)

    def evaluate() -> tuple[np.ndarray, float, float]:
        # The serving path's own scorer, at the pair length the model was loaded with.
        logits = score_pairs(model, dev_pairs, batch_size=max(config.batch_size, 64))
        return (
            logits,
            weighted_log_loss(logits, dev_labels, dev_weights),
            weighted_auc(logits, dev_labels, dev_weights),
        )

    history: list[dict[str, Any]] = []
    best_logits: np.ndarray | None = None
    if dev:
        _, loss0, auc0 = evaluate()
        history.append({"epoch": 0, "train_loss": None, "dev_log_loss": loss0, "dev_auc": auc0})
        logger.info("before training: dev log loss %.4f, AUC %.4f", loss0, auc0)

    stopper = EarlyStopper(config.early_stopping_patience)
    best_state: dict[str, Any] | None = None
    best_epoch = 0  # set below: the best evaluated epoch, else the last one
    rng = np.random.default_rng(config.seed)
    stopped_early = False
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = rng.permutation(len(train))
        loss_sum, weight_sum = 0.0, 0.0
        batches = range(0, len(order), config.batch_size)
        for start in tqdm(batches, desc=f"epoch {epoch}", disable=not progress, leave=False):
            batch = [train[i] for i in order[start : start + config.batch_size]]
            logits = _pair_logits(model, [(ex.query, ex.text) for ex in batch])  # (B,)
            labels = torch.tensor(
                [ex.label for ex in batch], dtype=logits.dtype, device=logits.device
            )  # (B,)
            weights = torch.tensor(
                [ex.weight for ex in batch], dtype=logits.dtype, device=logits.device
            )  # (B,)
            loss = weighted_bce_with_logits(logits, labels, weights)
            optimizer_step(model, loss, optimizer, scheduler)
            batch_weight = float(weights.sum())
            loss_sum += float(loss.detach()) * batch_weight
            weight_sum += batch_weight
        train_loss = loss_sum / weight_sum if weight_sum > 0 else float("nan")

        if not dev or (not config.eval_every_epoch and epoch < config.epochs):
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "dev_log_loss": math.nan,
                    "dev_auc": math.nan,
                }
            )
            logger.info("epoch %d: train loss %.4f", epoch, train_loss)
            continue
        logits, dev_loss, dev_auc = evaluate()
        history.append(
            {"epoch": epoch, "train_loss": train_loss, "dev_log_loss": dev_loss, "dev_auc": dev_auc}
        )
        logger.info(
            "epoch %d: train loss %.4f, dev log loss %.4f, dev AUC %.4f",
            epoch,
            train_loss,
            dev_loss,
            dev_auc,
        )
        improved, stop = stopper.update(dev_loss)
        if improved:
            best_epoch, best_logits = epoch, logits
            # Copy only when a later epoch could still be worse; the live weights are this epoch's.
            best_state = snapshot_state(model) if epoch < config.epochs else None
        if stop and epoch < config.epochs:
            stopped_early = True
            logger.info("early stopping after epoch %d; best epoch %d", epoch, best_epoch)
            break

    last_epoch = history[-1]["epoch"] if history else config.epochs
    if best_logits is None:
        best_epoch = last_epoch  # no dev set, or every dev loss was NaN: keep the final weights
    elif best_epoch != last_epoch:
        model.load_state_dict(best_state)
    model.eval()
    if dev and best_logits is None:
        # Every evaluated epoch was NaN: keep the final weights and report their logits.
        best_logits = evaluate()[0]

    manifest = {
        "kind": "cross-encoder",
        "objective": "weighted binary cross-entropy on one logit (self-normalised per batch)",
        "base_model": str(base_model),
        "config": asdict(config),
        "history": history,
        "best_epoch": best_epoch,
        "stopped_early": stopped_early,
        "data": {
            "n_train": len(train),
            "n_dev": len(dev),
            "train_weight_sum": float(sum(ex.weight for ex in train)),
            "train_mean_label": float(np.mean([ex.label for ex in train])),
            "dev_mean_label": float(dev_labels.mean()) if dev else None,
        },
        "versions": library_versions(),
    }

    def write(folder: Path) -> None:
        model.save(str(folder), create_model_card=False)
        write_training_json(folder, manifest)

    write_folder(out_dir, write)
    return TrainingResult(
        out_dir=out_dir,
        history=history,
        best_epoch=best_epoch,
        dev_logits=best_logits,
        dev_labels=dev_labels if dev else None,
    )


# --------------------------------------------------------------------------------------------
# Building training pairs


def build_pairs_from_qrels(
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    product_text: Mapping[str, str],
    *,
    negatives: Mapping[str, Sequence[str]] | None = None,
    max_grade: int = 2,
    skip_missing: bool = False,
) -> list[PairExample]:
    """Pointwise pairs from graded judgements: ``label = grade / max_grade``, weight 1.

    Negative grades (TREC's "junk") count as 0. ``negatives`` adds unjudged products per query
    (e.g. mined from BM25) with label 0; a product that is judged for that query keeps its
    judgement instead. Order: queries in ``qrels`` order, judged products first.
    Unknown query or product ids raise DataError, or are skipped when ``skip_missing``.
    """
    if max_grade < 1:
        raise ValueError(f"max_grade must be >= 1, got {max_grade}")
    pairs: list[PairExample] = []
    missing: list[str] = []
    for qid, judged in qrels.items():
        if qid not in queries:
            missing.append(f"query {qid}")
            continue
        query = queries[qid]
        for pid, grade in judged.items():
            if pid not in product_text:
                missing.append(f"product {pid}")
                continue
            if grade > max_grade:
                raise DataError(
                    f"grade {grade} for query {qid}, product {pid} exceeds max_grade={max_grade}",
                    field="grade",
                )
            pairs.append(PairExample(query, product_text[pid], max(grade, 0) / max_grade))
        for pid in (negatives or {}).get(qid, ()):
            if pid in judged:
                continue
            if pid not in product_text:
                missing.append(f"product {pid}")
                continue
            pairs.append(PairExample(query, product_text[pid], 0.0))
    _report_missing(missing, skip_missing)
    return pairs


def build_pairs_from_clicks(
    rows: Sequence[tuple[str, str, bool, float]],
    product_text: Mapping[str, str],
    sampled_negatives_per_query: int,
    rng: np.random.Generator,
    *,
    skip_missing: bool = False,
) -> list[PairExample]:
    """Pointwise pairs from a click log: one pair per impression plus random negatives.

    ``rows`` are ``(query, product_id, clicked, weight)`` impressions; a clicked one is a
    positive (label 1), a shown-but-not-clicked one a negative (label 0), each with its weight
    (the IPW weight). Then, per distinct query, ``sampled_negatives_per_query`` products drawn
    uniformly from the catalogue among those never shown for that query, label 0, weight 1
    (fewer if the catalogue runs out). ``rng`` is a ``numpy.random.Generator``.
    """
    pairs: list[PairExample] = []
    shown: dict[str, set[str]] = {}
    missing: list[str] = []
    for line, (query, pid, clicked, weight) in enumerate(rows, start=1):
        if not (math.isfinite(float(weight)) and float(weight) >= 0.0):
            raise DataError(
                f"weight must be finite and >= 0, got {weight!r}",
                path="clicks",
                line=line,
                field="weight",
            )
        shown.setdefault(query, set()).add(pid)
        if pid not in product_text:
            missing.append(f"product {pid}")
            continue
        pairs.append(PairExample(query, product_text[pid], 1.0 if clicked else 0.0, float(weight)))
    _report_missing(missing, skip_missing)

    if sampled_negatives_per_query > 0:
        catalogue = sorted(product_text)  # sorted so the draw depends on the rng only
        for query, seen in shown.items():
            seen_in_catalogue = sum(1 for pid in seen if pid in product_text)
            wanted = min(sampled_negatives_per_query, len(catalogue) - seen_in_catalogue)
            picked: list[str] = []
            taken = set(seen)
            # Rejection sampling: cheap while the shown set is a small part of the catalogue.
            while len(picked) < wanted:
                for idx in rng.integers(0, len(catalogue), size=2 * (wanted - len(picked)) + 4):
                    pid = catalogue[int(idx)]
                    if pid not in taken:
                        taken.add(pid)
                        picked.append(pid)
                        if len(picked) == wanted:
                            break
            pairs.extend(PairExample(query, product_text[pid], 0.0, 1.0) for pid in picked)
    return pairs


def _report_missing(missing: list[str], skip_missing: bool) -> None:
    if not missing:
        return
    unique = list(dict.fromkeys(missing))
    message = f"{len(unique)} unknown ids, e.g. {', '.join(unique[:5])}"
    if not skip_missing:
        raise DataError(
            message
            + " (do the queries, judgements and catalogue match? skip_missing=True skips them)"
        )
    logger.warning("skipped %s", message)
