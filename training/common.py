"""What the three training loops (cross-encoder, bi-encoder, masked LM) share: seeding, the
AdamW optimiser and schedule, one update step, early stopping, weight snapshots, and the
``training.json`` each saved model carries. Models are saved with
``shopsearch.files.write_folder`` (written beside the target, then swapped in)."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shopsearch.errors import DataError


@dataclass
class TrainingResult:
    """What a training run produced.

    ``history`` has one dict per epoch (``epoch``, ``train_loss``, ``dev_log_loss``,
    ``dev_auc``); epoch 0 is the model before training (``train_loss`` None). Metrics not
    measured (no dev set, single-class dev for AUC) are NaN here and null in training.json.
    ``best_epoch`` (>= 1) is the epoch whose weights were saved.
    ``dev_logits`` (shape ``(n_dev,)``) are the saved model's raw logits on the dev pairs and
    ``dev_labels`` their targets, ready for fitting a calibrator. Both are None for the
    bi-encoder, whose dev evaluation is a callable.
    """

    out_dir: Path
    history: list[dict[str, Any]]
    best_epoch: int
    dev_logits: np.ndarray | None = None
    dev_labels: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class EarlyStopper:
    """Tracks the best (lowest) value; ``update`` returns (improved, should_stop).

    Stops once ``patience`` updates in a row failed to improve, as Keras and the transformers
    callback do. ``patience=None`` never stops.
    """

    def __init__(self, patience: int | None, min_delta: float = 0.0) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.best = math.inf
        self.bad_updates = 0

    def update(self, value: float) -> tuple[bool, bool]:
        # NaN never improves, so a diverged run keeps its last good weights.
        if value == value and value < self.best - self.min_delta:
            self.best = value
            self.bad_updates = 0
            return True, False
        self.bad_updates += 1
        return False, self.patience is not None and self.bad_updates >= self.patience


# --------------------------------------------------------------------------------------------
# Shared helpers (the bi-encoder and MLM loops use them too)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (the new classifier head's init and dropout depend on it)."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(
    model: Any, learning_rate: float, weight_decay: float, total_steps: int, warmup_ratio: float
) -> tuple[Any, Any]:
    """AdamW (no decay on biases and LayerNorm weights) with linear warm-up then linear decay."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    decay: list[Any] = []
    no_decay: list[Any] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (
            no_decay if param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay
        ).append(param)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=learning_rate,
        foreach=True,  # batched over tensors: the default per-tensor loop is slow on CPU
    )
    warmup_steps = int(math.ceil(warmup_ratio * total_steps))
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup_steps, max(total_steps, 1))
    return optimizer, scheduler


def optimizer_step(model: Any, loss: Any, optimizer: Any, scheduler: Any) -> None:
    """One update: backward, gradient norm clipped at 1, AdamW step, schedule step."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()


def snapshot_state(model: Any) -> dict[str, Any]:
    """A detached copy of the weights, to restore the best epoch without writing to disk."""
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def library_versions() -> dict[str, str]:
    import sentence_transformers
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
    }


def write_training_json(out_dir: Path, payload: Mapping[str, Any]) -> None:
    """``training.json``: the run's manifest (config, history, data sizes, library versions)."""
    (Path(out_dir) / "training.json").write_text(
        json.dumps(
            _finite(payload), indent=2, ensure_ascii=False, default=_json_default, allow_nan=False
        )
        + "\n",
        encoding="utf-8",
    )


def _finite(value: Any) -> Any:
    """NaN and infinities become null: strict JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def check_out_dir(out_dir: Path, overwrite: bool) -> Path:
    """Fail before training, not after, when ``out_dir`` holds something and may not be replaced."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DataError(
            f"{out_dir} already exists and is not empty: choose another folder or pass "
            "overwrite=True"
        )
    return out_dir


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
