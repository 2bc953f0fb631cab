"""The LambdaMART model: LightGBM's ``lambdarank`` objective, stored in LightGBM's own text
format (``model.txt``) beside a JSON record (``ltr.json``: feature names, feature importances,
parameters, what it was trained on). No pickle anywhere: loading a model reads text.

A training example is a ``Group``: one query's candidates (a feature matrix, ``(n, n_features)``
float64, columns in ``ltr.features.FEATURES`` order), their integer relevance labels (graded
judgements, or clicks) and, for click data, the 1-based positions at which they were shown
(LightGBM's position-debiased LambdaMART learns one examination factor per position from
them; Unbiased LambdaMART, Hu et al. 2019).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from shopsearch.errors import SearchError
from shopsearch.ltr.features import FEATURES

logger = logging.getLogger(__name__)

MODEL_FILE = "model.txt"
INFO_FILE = "ltr.json"
FORMAT = "shopsearch-ltr"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Group:
    """One query's (or one session's) candidates: ``features`` ``(n, n_features)``, integer
    ``labels`` ``(n,)`` (higher is better), optional 1-based ``positions`` ``(n,)``."""

    features: np.ndarray
    labels: np.ndarray
    positions: np.ndarray | None = None
    query_id: str = ""

    def __post_init__(self) -> None:
        n = self.features.shape[0]
        if self.features.ndim != 2 or self.labels.shape != (n,):
            raise ValueError(
                f"group {self.query_id!r}: features {self.features.shape} and labels "
                f"{self.labels.shape} do not match"
            )
        if self.positions is not None and self.positions.shape != (n,):
            raise ValueError(f"group {self.query_id!r}: positions {self.positions.shape}")


@dataclass(frozen=True)
class LTRParams:
    """LightGBM settings. ``num_threads=1`` and ``deterministic`` make a run repeatable."""

    rounds: int = 300
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_data_in_leaf: int = 20
    feature_fraction: float = 1.0
    early_stopping: int = 30
    eval_at: int = 10
    num_threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.num_leaves < 2 or self.min_data_in_leaf < 1:
            raise ValueError("rounds >= 1, num_leaves >= 2 and min_data_in_leaf >= 1 are needed")
        if not 0.0 < self.learning_rate <= 1.0 or not 0.0 < self.feature_fraction <= 1.0:
            raise ValueError("learning_rate and feature_fraction must be in (0, 1]")

    def lightgbm(self) -> dict[str, Any]:
        return {
            "objective": "lambdarank",
            "metric": "ndcg",
            "ndcg_eval_at": [self.eval_at],
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "num_threads": self.num_threads,
            "seed": self.seed,
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
        }


@dataclass
class LTRModel:
    """A trained LambdaMART ranker: ``predict`` scores a feature matrix (higher is better)."""

    booster: Any
    features: tuple[str, ...] = FEATURES
    info: dict[str, Any] = field(default_factory=dict)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Scores of ``features`` ``(n, n_features)``, float64 ``(n,)``."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != len(self.features):
            raise ValueError(
                f"the model takes {len(self.features)} features, got an array {features.shape}"
            )
        if features.shape[0] == 0:
            return np.zeros(0, dtype=np.float64)
        return np.asarray(self.booster.predict(features, num_threads=1), dtype=np.float64)

    def importances(self) -> dict[str, float]:
        """Total gain of the splits on each feature, in ``features`` order."""
        gains = self.booster.feature_importance(importance_type="gain")
        return {name: float(g) for name, g in zip(self.features, gains)}

    def save(self, folder: Path) -> Path:
        """Write ``model.txt`` (LightGBM text) and ``ltr.json`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MODEL_FILE).write_text(self.booster.model_to_string(), encoding="utf-8")
        info = {
            **self.info,
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "features": list(self.features),
            "importances": self.importances(),
        }
        (folder / INFO_FILE).write_text(
            json.dumps(info, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> LTRModel:
        """Read a folder ``save`` wrote; refuses a model whose features are not this
        version's (its columns would mean other things)."""
        import lightgbm as lgb

        folder = Path(folder)
        info_path, model_path = folder / INFO_FILE, folder / MODEL_FILE
        if not info_path.is_file() or not model_path.is_file():
            raise SearchError(
                f"{folder} is not a learning-to-rank model (it needs {MODEL_FILE} and "
                f"{INFO_FILE}); train one with `search-cli train-ltr`"
            )
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SearchError(f"{info_path} is damaged ({exc}); train the model again") from None
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise SearchError(f"{info_path} is not a shopsearch learning-to-rank record")
        features = tuple(info.get("features") or ())
        if features != FEATURES:
            raise SearchError(
                f"the model in {folder} uses the features {list(features)}, this shopsearch "
                f"computes {list(FEATURES)}; train it again with `search-cli train-ltr`"
            )
        try:
            booster = lgb.Booster(model_str=model_path.read_text(encoding="utf-8"))
        except lgb.basic.LightGBMError as exc:
            raise SearchError(f"{model_path} is damaged ({exc}); train the model again") from None
        if booster.num_feature() != len(FEATURES):
            raise SearchError(
                f"{model_path} takes {booster.num_feature()} features, its record says "
                f"{len(FEATURES)}; train the model again"
            )
        return cls(booster, features, info)


def _dataset(groups: Sequence[Group], *, reference: Any = None) -> Any:
    import lightgbm as lgb

    features = np.concatenate([g.features for g in groups])
    labels = np.concatenate([g.labels for g in groups]).astype(np.int64)
    if labels.min() < 0:
        raise ValueError("relevance labels must be >= 0")
    with_positions = [g.positions is not None for g in groups]
    if any(with_positions) and not all(with_positions):
        raise ValueError("either every group has positions or none has")
    positions = (
        np.concatenate([np.asarray(g.positions) for g in groups]).astype(np.int64) - 1
        if all(with_positions)
        else None
    )
    return lgb.Dataset(
        features,
        label=labels,
        group=[len(g.labels) for g in groups],
        position=positions,
        feature_name=list(FEATURES),
        reference=reference,
        free_raw_data=False,
        params={"max_bin": 255, "verbosity": -1},
    )


def train_lambdamart(
    train: Sequence[Group],
    valid: Sequence[Group] = (),
    params: LTRParams = LTRParams(),
    info: dict[str, Any] | None = None,
) -> LTRModel:
    """Fit LambdaMART on ``train``; with ``valid`` groups, stop when its nDCG@``eval_at`` has
    not improved for ``params.early_stopping`` rounds and keep the best round."""
    import lightgbm as lgb

    train = [g for g in train if len(g.labels)]
    if not train:
        raise SearchError("no training examples: no query has any candidate")
    if all(len(set(g.labels.tolist())) < 2 for g in train):
        raise SearchError(
            "every training query's candidates have the same label, so there is no order to "
            "learn; give judgements (or clicks) that tell candidates apart"
        )
    labels = max(int(g.labels.max()) for g in train)
    config = params.lightgbm()
    config["label_gain"] = [float(2**i - 1) for i in range(max(labels, 1) + 1)]
    dtrain = _dataset(train)
    valid = [g for g in valid if len(g.labels)]
    sets, names = [dtrain], ["train"]
    callbacks: list[Callable[..., Any]] = []
    if valid:
        sets.append(_dataset(valid, reference=dtrain))
        names.append("valid")
        callbacks.append(lgb.early_stopping(params.early_stopping, verbose=False))
    evals: dict[str, Any] = {}
    callbacks.append(lgb.record_evaluation(evals))
    booster = lgb.train(
        config,
        dtrain,
        num_boost_round=params.rounds,
        valid_sets=sets,
        valid_names=names,
        callbacks=callbacks,
    )
    best = booster.best_iteration or booster.current_iteration()
    metric = f"ndcg@{params.eval_at}"
    record = {
        **(info or {}),
        "params": asdict(params),
        "best_iteration": int(best),
        "train_groups": len(train),
        "valid_groups": len(valid),
        "train_rows": int(sum(len(g.labels) for g in train)),
    }
    if "valid" in evals:
        record[f"valid_{metric}"] = float(evals["valid"][metric][best - 1])
    if booster.best_iteration:
        # Keep only the best round's trees, so what is saved is what was selected.
        booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    return LTRModel(booster, FEATURES, record)
