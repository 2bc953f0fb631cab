"""The cross-encoder reranker: one logit per (query, product text) pair, and click
probabilities from the calibrator stored beside the model (``rerank.calibration``).

``score_pairs`` is the one inference path: serving (``CrossEncoderReranker.logits``), the
trainer's dev evaluation and calibration fitting all call it with the model loaded at the
pair length it was trained with, so a calibrator is fitted on exactly the logits the engine
serves.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 128


def trained_max_length(model_dir: Path) -> int | None:
    """The pair length a model was fine-tuned with (its ``training.json``), if recorded.

    Scoring must truncate pairs as training did: a model trained on the first 32 tokens
    of (query, product text) has never seen the description that a longer cut would add.
    """
    info = Path(model_dir) / "training.json"
    if not info.is_file():
        return None
    try:
        value = json.loads(info.read_text("utf-8")).get("config", {}).get("max_length")
    except (json.JSONDecodeError, AttributeError):
        return None
    return int(value) if isinstance(value, int) and value > 0 else None


def score_pairs(model: Any, pairs: Sequence[tuple[str, str]], batch_size: int = 32) -> np.ndarray:
    """Raw logits (no sigmoid) of a loaded ``CrossEncoder``, float64 ``(len(pairs),)``.

    Pairs are truncated to the model's own ``max_length`` (set when it was loaded), longest
    side first, as the library does for training batches.
    """
    import torch

    if not pairs:
        return np.zeros(0, dtype=np.float64)
    with torch.inference_mode():
        logits = model.predict(
            [tuple(p) for p in pairs],
            batch_size=batch_size,
            activation_fn=torch.nn.Identity(),
            show_progress_bar=False,
            convert_to_numpy=True,
        )
    return np.asarray(logits, dtype=np.float64).reshape(len(pairs))


class ExportedCrossEncoder:
    """A cross-encoder exported by ``models.runtime`` (ONNX Runtime or OpenVINO) behind the
    folder's own tokenizer: each product text is tokenised once and kept, and pairs are
    assembled and truncated as the tokenizer would (``rerank.pair_inputs``)."""

    def __init__(self, folder: Path, record: dict, max_length: int) -> None:
        from transformers import AutoTokenizer

        from shopsearch.models.runtime import compile_runtime
        from shopsearch.rerank.pair_inputs import PairTokenizer

        self.tokens = PairTokenizer(AutoTokenizer.from_pretrained(str(folder)), max_length)
        self.model = compile_runtime(folder / record["file"], record["runtime"])

    def logits(self, pairs: Sequence[tuple[str, str]], batch_size: int) -> np.ndarray:
        out = np.zeros(len(pairs), dtype=np.float64)
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start : start + batch_size]
            out[start : start + len(batch)] = self.model(self.tokens.batch(batch)).reshape(-1)
        return out


class CrossEncoderReranker:
    """Implements the ``Reranker`` interface over a sentence-transformers ``CrossEncoder``
    folder (with its optional ``calibration.json`` and ``training.json``), run by PyTorch or,
    when the folder has a ``runtime.json`` (``search-cli optimize-reranker``), by the runtime
    it names."""

    def __init__(
        self,
        model: str | Path,
        *,
        max_length: int | None = None,
        batch_size: int = 32,
        device: str = "cpu",
    ) -> None:
        from shopsearch.models.runtime import read_runtime
        from shopsearch.rerank.calibration import read_calibration

        self.name = str(model)
        if max_length is None:
            max_length = trained_max_length(Path(model)) or DEFAULT_MAX_LENGTH
        self.max_length = max_length
        self.batch_size = batch_size
        self.calibrator = read_calibration(Path(model))
        record = read_runtime(model)
        self.runtime = record["runtime"] if record else "torch"
        if record is None:
            from shopsearch.models.registry import load_cross_encoder

            self._model = load_cross_encoder(str(model), max_length=max_length, device=device)
        else:
            self._model = ExportedCrossEncoder(Path(model), record, max_length)

    def pretokenize(self, texts: Sequence[str]) -> None:
        """Tokenise product texts ahead of the first search (exported runtimes keep them)."""
        if isinstance(self._model, ExportedCrossEncoder):
            self._model.tokens.pretokenize(texts)

    @property
    def calibrated(self) -> bool:
        return self.calibrator is not None

    def pair_logits(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Logits of arbitrary (query, text) pairs, shape ``(len(pairs),)``."""
        if isinstance(self._model, ExportedCrossEncoder):
            return self._model.logits(pairs, self.batch_size)
        return score_pairs(self._model, pairs, self.batch_size)

    def logits(self, query: str, texts: Sequence[str]) -> np.ndarray:
        """Logits of ``query`` against each text, shape ``(len(texts),)``."""
        return self.pair_logits([(query, t) for t in texts])

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        from shopsearch.rerank.calibration import sigmoid

        if self.calibrator is not None:
            return np.asarray(self.calibrator.predict_proba(logits), dtype=np.float64)
        return sigmoid(logits)
