"""A seeded position-based click model (PBM) that turns rankings and judgements into a click log.

The model (Richardson et al. 2007; Craswell et al. 2008; used for unbiased learning to rank by
Joachims et al. 2017 and Wang et al. 2018). A user examines the result at rank ``p`` (1-based)
with probability ``theta_p = (1 / p) ** eta``, independently of what it shows, and clicks an
examined product of relevance grade ``g`` with probability ``P(click | g)``::

    P(click at p | grade g) = P(examine p) * P(click | g) = (1 / p) ** eta * click_prob_by_grade[g]

``eta = 0`` means no position bias; larger ``eta`` means a steeper fall-off. A clicked product is
purchased with probability ``purchase_prob_given_click_by_grade[g]``. ``click_prob_by_grade[0] >
0`` models noise clicks on irrelevant products. Products absent from the judgements have grade 0
(the usual convention for sparse judgements).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone

import numpy as np

from shopsearch.training.clicks import Impression

logger = logging.getLogger(__name__)

DEFAULT_CLICK_PROB_BY_GRADE: dict[int, float] = {0: 0.05, 1: 0.3, 2: 0.7}
DEFAULT_PURCHASE_PROB_GIVEN_CLICK_BY_GRADE: dict[int, float] = {0: 0.0, 1: 0.05, 2: 0.2}
DEFAULT_START_TIME = datetime(2024, 1, 1, tzinfo=timezone.utc)


def true_propensities(depth: int, eta: float = 1.0) -> np.ndarray:
    """Examination probabilities ``(1 / p) ** eta`` for ranks ``p = 1..depth``; shape ``(depth,)``.

    Index 0 is rank 1 and always equals 1.0.
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    if eta < 0:
        raise ValueError(f"eta must be non-negative, got {eta}")
    return (1.0 / np.arange(1, depth + 1, dtype=np.float64)) ** eta


def _grade_table(probs: Mapping[int, float], name: str) -> tuple[list[int], list[float]]:
    if not probs:
        raise ValueError(f"{name} must not be empty")
    for g, prob in probs.items():
        if not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f"{name}[{g}] must be a probability in [0, 1], got {prob}")
    grades = sorted(int(g) for g in probs)
    return grades, [float(probs[g]) for g in grades]


def _lookup(table: tuple[list[int], list[float]], grade: int) -> float:
    # Grades outside the table use the nearest grade it has: the largest key <= grade, or the
    # smallest key for grades below every key (e.g. TREC's -1).
    grades, values = table
    idx = int(np.searchsorted(grades, grade, side="right")) - 1
    return values[max(idx, 0)]


def simulate_clicks(
    rankings: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    queries: Mapping[str, str] | None = None,
    sessions_per_query: int = 10,
    depth: int = 10,
    eta: float = 1.0,
    click_prob_by_grade: Mapping[int, float] | None = None,
    purchase_prob_given_click_by_grade: Mapping[int, float] | None = None,
    seed: int = 0,
    shuffle_top: int = 0,
    start_time: datetime | str | None = None,
) -> list[Impression]:
    """Simulate ``sessions_per_query`` sessions per query under the PBM described in the module.

    - ``rankings``: query id -> product ids in the order shown; the first ``depth`` are shown.
    - ``qrels``: query id -> product id -> grade; missing products have grade 0.
    - ``queries``: query id -> text. The log stores the text; without this mapping it stores the
      query id. Every ranked query id must have a text when it is given.
    - ``shuffle_top``: if > 1, each session shows the first ``shuffle_top`` products in a fresh
      random order (a randomised intervention, as in RandTop-n of Wang et al. 2016), so the same
      product is seen at several ranks; this is what lets propensities be estimated from a log.
    - ``start_time``: time of the first session (``datetime`` or ISO 8601 string; default
      2024-01-01T00:00:00Z). Session ``k`` (counting over all queries) starts ``k`` minutes later.

    Queries are simulated in sorted id order, so the output depends only on the arguments and the
    seed, not on dict order. Every shown product yields one impression (clicked or not), ordered
    by query, session, position. ``session_id`` is ``"<query id>#<session>"``; ``user_id`` is None.
    """
    if sessions_per_query < 1:
        raise ValueError(f"sessions_per_query must be at least 1, got {sessions_per_query}")
    if shuffle_top < 0:
        raise ValueError(f"shuffle_top must be non-negative, got {shuffle_top}")
    theta = true_propensities(depth, eta)
    click_table = _grade_table(
        DEFAULT_CLICK_PROB_BY_GRADE if click_prob_by_grade is None else click_prob_by_grade,
        "click_prob_by_grade",
    )
    purchase_table = _grade_table(
        DEFAULT_PURCHASE_PROB_GIVEN_CLICK_BY_GRADE
        if purchase_prob_given_click_by_grade is None
        else purchase_prob_given_click_by_grade,
        "purchase_prob_given_click_by_grade",
    )
    if start_time is None:
        t0 = DEFAULT_START_TIME
    elif isinstance(start_time, str):
        try:
            t0 = datetime.fromisoformat(start_time)
        except ValueError:
            raise ValueError(f"start_time must be ISO 8601, got {start_time!r}") from None
    else:
        t0 = start_time

    rng = np.random.default_rng(seed)
    out: list[Impression] = []
    session_counter = 0
    for qid in sorted(rankings):
        shown = list(rankings[qid])[:depth]
        if len(set(shown)) != len(shown):
            raise ValueError(f"ranking for query {qid!r} lists a product more than once")
        if queries is not None and qid not in queries:
            raise ValueError(f"no query text for query id {qid!r}")
        text = queries[qid] if queries is not None else qid
        if not shown:
            logger.warning("query %r has an empty ranking; no impressions simulated", qid)
            continue
        judged = qrels.get(qid, {})
        n = len(shown)
        grades = [int(judged.get(pid, 0)) for pid in shown]
        p_click = np.array([_lookup(click_table, g) for g in grades])
        p_purchase = np.array([_lookup(purchase_table, g) for g in grades])
        top = min(shuffle_top, n)
        for s in range(sessions_per_query):
            order = np.arange(n)
            if top > 1:
                order[:top] = rng.permutation(top)
            # Three uniforms per slot, always drawn, so the stream does not depend on outcomes.
            u = rng.random((3, n))
            examined = u[0] < theta[:n]
            clicked = examined & (u[1] < p_click[order])
            purchased = clicked & (u[2] < p_purchase[order])
            stamp = (t0 + timedelta(minutes=session_counter)).isoformat()
            session_id = f"{qid}#{s}"
            for rank in range(n):
                out.append(
                    Impression(
                        query=text,
                        product_id=shown[order[rank]],
                        position=rank + 1,
                        clicked=bool(clicked[rank]),
                        purchased=bool(purchased[rank]),
                        session_id=session_id,
                        timestamp=stamp,
                    )
                )
            session_counter += 1
    logger.info("simulated %d impressions over %d sessions", len(out), session_counter)
    return out
