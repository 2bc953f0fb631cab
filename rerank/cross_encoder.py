"""The cross-encoder reranker: scores (query, product text) pairs as click probabilities.

The model outputs one logit per pair. A calibrator fitted on held-out clicks
(``calibration.json`` beside the model, see ``rerank.calibration``) maps logits to click
probabilities; without one the plain sigmoid is used and the result says it is uncalibrated.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from shopsearch.retrieval.types import Hit, sort_hits

logger = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
DEFAULT_MAX_LENGTH = 128


def trained_max_length(model_dir: Path) -> int | None:
    """The pair length a model was fine-tuned with (its ``training.json``), if recorded.

    Scoring must truncate pairs as training did: a model trained on the first 32 tokens
    of (query, product text) has never seen the description that a longer cut would add.
    """
    info = model_dir / "training.json"
    if not info.is_file():
        return None
    try:
        value = json.loads(info.read_text("utf-8")).get("config", {}).get("max_length")
    except (json.JSONDecodeError, AttributeError):
        return None
    return int(value) if isinstance(value, int) and value > 0 else None


class CrossEncoderReranker:
    """Implements the ``Reranker`` interface over a sentence-transformers ``CrossEncoder``."""

    def __init__(self, model: str | Path, *, max_length: int | None = None, batch_size: int = 32,
                 device: str = "cpu") -> None:
        from shopsearch.models.registry import load_cross_encoder

        self.name = str(model)
        if max_length is None:
            max_length = trained_max_length(Path(model)) or DEFAULT_MAX_LENGTH
        self.max_length = max_length
        self._model = load_cross_encoder(str(model), max_length=max_length)
        self._model.to(device)
        self.batch_size = batch_size
        self.calibrator: Any = None
        calibration = Path(model) / CALIBRATION_FILE
        if calibration.is_file():
            from shopsearch.rerank.calibration import load_calibrator

            self.calibrator = load_calibrator(json.loads(calibration.read_text("utf-8")))

    @property
    def calibrated(self) -> bool:
        return self.calibrator is not None

    def predict_logits(self, query: str, texts: Sequence[str]) -> np.ndarray:
        """Raw logits, shape ``(len(texts),)``."""
        import torch

        if not texts:
            return np.zeros(0, dtype=np.float32)
        with torch.inference_mode():
            logits = self._model.predict([(query, t) for t in texts], batch_size=self.batch_size,
                                         activation_fn=torch.nn.Identity(),
                                         show_progress_bar=False, convert_to_numpy=True)
        return np.asarray(logits, dtype=np.float64).reshape(len(texts))

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        if self.calibrator is not None:
            return np.asarray(self.calibrator.predict_proba(logits), dtype=np.float64)
        return 1.0 / (1.0 + np.exp(-logits))

    def rerank(self, query: str, hits: list[Hit], texts: Sequence[str]) -> list[Hit]:
        """Re-score ``hits`` (with their product ``texts``) by click probability; each hit's
        scores keep the raw ``click_logit`` too, for blending with the fused score."""
        if len(hits) != len(texts):
            raise ValueError(f"got {len(hits)} hits but {len(texts)} texts")
        logits = self.predict_logits(query, texts)
        probs = self.probabilities(logits)
        return sort_hits([Hit(h.product_id, float(p), {**h.scores, "click_probability": float(p),
                                                       "click_logit": float(x)})
                          for h, p, x in zip(hits, probs, logits)])
