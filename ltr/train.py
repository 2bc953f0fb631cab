"""Training the LambdaMART stage: on graded judgements, or on a click log with position-bias
correction. Examples come from the engine's own ``ltr`` stage (``SearchEngine.ltr_stage``):
its candidates (the served pipeline's top ``top``) and their features, so a model is trained
on exactly what it is served.

- **Judgements** (``train_ltr_from_qrels``): one group per judged query, its candidates
  labelled with their grade (unjudged: 0). A tenth of the queries (seeded) is held out for
  early stopping on nDCG@10.
- **Clicks** (``train_ltr_from_clicks``), three ``correction`` methods:

  * ``"position"``: one group per (query, session) of the products shown, label = clicked,
    with the 1-based positions shown given to LightGBM (its position-debiased LambdaMART
    learns an examination factor per position alongside the ranker; Unbiased LambdaMART,
    Hu et al., WWW 2019).
  * ``"ipw"``: one group per query of the products shown for it, labelled with their
    inverse-propensity-weighted click-through rate ``sum(clicks) / sum(theta_position)`` (the
    propensities ``theta`` estimated from the log by EM, ``training.propensity``, unless
    given), capped at 1 and graded 0..4 (``round(4 * rate)``).
  * ``"none"``: sessions labelled by clicks, no correction (the biased baseline).

  A product shown in the log but not among the engine's candidates now gets features with
  every first-stage score missing.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from shopsearch.errors import DataError
from shopsearch.ltr.model import Group, LTRModel, LTRParams, train_lambdamart
from shopsearch.ltr.stage import LTRRetriever
from shopsearch.retrieval.types import Hit

logger = logging.getLogger(__name__)

CORRECTIONS = ("position", "ipw", "none")
IPW_GRADES = 4


@dataclass
class LTRTrainingResult:
    model: LTRModel
    first_stage: str
    top: int
    queries: dict[str, int]
    info: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """What the index manifest keeps about the installed model."""
        return {
            "features": list(self.model.features),
            "importances": self.model.importances(),
            "first_stage": self.first_stage,
            "top": self.top,
            "trained_on": self.model.info.get("trained_on"),
            "best_iteration": self.model.info.get("best_iteration"),
            "valid_ndcg@10": self.model.info.get("valid_ndcg@10"),
        }


def split_ids(ids: Sequence[str], valid_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A seeded split of ``ids`` into (train, valid); at least one of each when there are two
    or more, none held out when ``valid_fraction`` is 0."""
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    ordered = sorted(ids)
    random.Random(seed).shuffle(ordered)
    n_valid = round(len(ordered) * valid_fraction)
    if valid_fraction > 0 and len(ordered) >= 2:
        n_valid = min(max(n_valid, 1), len(ordered) - 1)
    valid = set(ordered[:n_valid])
    return [i for i in ids if i not in valid], [i for i in ids if i in valid]


def _candidates(
    stage: LTRRetriever, texts: Sequence[str], batch_size: int = 64
) -> dict[str, list[Hit]]:
    out: dict[str, list[Hit]] = {}
    unique = list(dict.fromkeys(texts))
    for start in range(0, len(unique), batch_size):
        batch = unique[start : start + batch_size]
        for text, hits in zip(batch, stage.candidates(batch)):
            out[text] = hits
    return out


def judged_groups(
    stage: LTRRetriever,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    ids: Sequence[str],
) -> list[Group]:
    """One group per query id: its candidates, labelled by grade (unjudged 0)."""
    candidates = _candidates(stage, [queries[q] for q in ids])
    groups = []
    for qid in ids:
        hits = candidates[queries[qid]]
        if not hits:
            continue
        judged = qrels.get(qid, {})
        labels = np.array([max(int(judged.get(h.product_id, 0)), 0) for h in hits], np.int64)
        groups.append(Group(stage.features(queries[qid], hits), labels, query_id=qid))
    return groups


def train_ltr_from_qrels(
    stage: LTRRetriever,
    first_stage: str,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    params: LTRParams = LTRParams(),
    valid_fraction: float = 0.1,
    trained_on: str = "judgements",
) -> LTRTrainingResult:
    """LambdaMART on graded judgements of the judged ``queries`` (see the module docstring)."""
    ids = [q for q in queries if q in qrels]
    if not ids:
        raise DataError("no query has judgements: give queries and qrels that share query ids")
    train_ids, valid_ids = split_ids(ids, valid_fraction, params.seed)
    train = judged_groups(stage, queries, qrels, train_ids)
    valid = judged_groups(stage, queries, qrels, valid_ids)
    model = train_lambdamart(
        train,
        valid,
        params,
        info={"trained_on": trained_on, "first_stage": first_stage, "top": stage.top},
    )
    return LTRTrainingResult(
        model,
        first_stage,
        stage.top,
        {"train": len(train_ids), "valid": len(valid_ids)},
        {"held_out_queries": sorted(valid_ids)},
    )


def _features_for_shown(
    stage: LTRRetriever, query: str, hits: list[Hit], shown: Sequence[str]
) -> tuple[np.ndarray, list[int]]:
    """Features of the candidates plus any shown product that is not among them (appended,
    with no first-stage scores); returns the matrix and the row of each shown product."""
    row_of = {h.product_id: i for i, h in enumerate(hits)}
    extra = [Hit(pid, 0.0, {}) for pid in dict.fromkeys(shown) if pid not in row_of]
    for hit in extra:
        row_of[hit.product_id] = len(row_of)
    matrix = stage.features(query, hits + extra)
    return matrix, [row_of[pid] for pid in shown]


def click_groups(
    stage: LTRRetriever,
    impressions: Sequence[Any],
    correction: str,
    propensities: np.ndarray | None = None,
) -> list[Group]:
    """Groups from a click log (``training.clicks.Impression``s) for one ``correction``."""
    from shopsearch.training.propensity import propensity_at

    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; choose from {', '.join(CORRECTIONS)}")
    candidates = _candidates(stage, [i.query for i in impressions])
    groups: list[Group] = []
    if correction == "ipw":
        if propensities is None:
            raise ValueError("the ipw correction needs propensities")
        shown: dict[str, dict[str, list[float]]] = {}
        theta = propensity_at([i.position for i in impressions], propensities)
        for imp, t in zip(impressions, theta):
            clicks = shown.setdefault(imp.query, {}).setdefault(imp.product_id, [0.0, 0.0])
            clicks[0] += float(imp.clicked)
            clicks[1] += float(t)
        for query in sorted(shown):
            products = list(shown[query])
            rate = np.array([min(shown[query][p][0] / shown[query][p][1], 1.0) for p in products])
            matrix, rows = _features_for_shown(stage, query, candidates[query], products)
            labels = np.rint(rate * IPW_GRADES).astype(np.int64)
            groups.append(Group(matrix[rows], labels, query_id=query))
        return groups
    sessions: dict[tuple[str, str], list[Any]] = {}
    for n, imp in enumerate(impressions):
        key = (imp.query, imp.session_id if imp.session_id is not None else f"#{n}")
        sessions.setdefault(key, []).append(imp)
    for (query, session), shown_list in sorted(sessions.items()):
        products = [i.product_id for i in shown_list]
        matrix, rows = _features_for_shown(stage, query, candidates[query], products)
        groups.append(
            Group(
                matrix[rows],
                np.array([int(i.clicked) for i in shown_list], dtype=np.int64),
                np.array([i.position for i in shown_list], dtype=np.int64)
                if correction == "position"
                else None,
                query_id=f"{query}#{session}",
            )
        )
    return groups


def train_ltr_from_clicks(
    stage: LTRRetriever,
    first_stage: str,
    impressions: Sequence[Any],
    *,
    correction: str = "position",
    propensities: np.ndarray | None = None,
    params: LTRParams = LTRParams(),
    valid_fraction: float = 0.1,
) -> LTRTrainingResult:
    """LambdaMART on a click log with position-bias ``correction`` (module docstring). Queries
    (not sessions) are split into train and valid, so no query is in both."""
    from shopsearch.training.propensity import estimate_propensities_em

    if not impressions:
        raise DataError("the click log is empty")
    known = [i for i in impressions if stage.featurizer.knows(i.product_id)]
    if not known:
        raise DataError(
            "none of the click log's products is in this index's catalogue (e.g. product id "
            f"{impressions[0].product_id!r}); train on the index the log was collected from"
        )
    if len(known) < len(impressions):
        logger.warning(
            "%d impressions of products not in the index were left out",
            len(impressions) - len(known),
        )
    impressions = known
    if correction == "ipw" and propensities is None:
        deepest = min(10, max(i.position for i in impressions))
        propensities = estimate_propensities_em(impressions, max_position=deepest)
        logger.info("estimated propensities: %s", np.round(propensities, 3).tolist())
    texts = list(dict.fromkeys(i.query for i in impressions))
    train_q, valid_q = split_ids(texts, valid_fraction, params.seed)
    valid_set = set(valid_q)
    train = click_groups(
        stage, [i for i in impressions if i.query not in valid_set], correction, propensities
    )
    valid = click_groups(
        stage, [i for i in impressions if i.query in valid_set], correction, propensities
    )
    info: dict[str, Any] = {
        "trained_on": f"click log ({correction} correction)",
        "correction": correction,
        "first_stage": first_stage,
        "top": stage.top,
    }
    if propensities is not None and correction == "ipw":
        info["propensities"] = [float(x) for x in propensities]
    model = train_lambdamart(train, valid, params, info=info)
    return LTRTrainingResult(
        model,
        first_stage,
        stage.top,
        {"train": len(train_q), "valid": len(valid_q)},
        {"correction": correction},
    )
