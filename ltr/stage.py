"""The ``ltr`` stage: the served pipeline's candidates reordered by a LambdaMART model.

Like every stage it is a ``Retriever``, so ``query``, ``benchmark`` and the server run this one
code path. It asks its first stage (``rerank`` when the index has a reranker, else ``hybrid``)
for a fixed number of candidates, ``top``, whatever ``k`` is asked for, so a benchmark's run
(k = 1000) and a shopper's page (k = 10) are the same ranking; computes each candidate's
features (``ltr.features``), scores them with the model and sorts by ``(-score, product id)``.
Each hit keeps every earlier stage's scores (``bm25``, ``dense``, ``fused``, ``click_logit``,
``click_probability``) and gains ``ltr``, its model score, which is also its ``score``.

The click probability a shopper is shown stays the cross-encoder's calibrated probability of a
click on that product for that query. The final order is the model's, which uses the click
logit as one feature among the others (BM25, dense, text matches, measures), so the list is
not sorted by that probability: a product the model ranks higher can show a lower one.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from shopsearch.ltr.features import Featurizer
from shopsearch.ltr.model import LTRModel
from shopsearch.retrieval.base import Retriever, Timings
from shopsearch.retrieval.filters import Filters
from shopsearch.retrieval.timing import timed
from shopsearch.retrieval.types import Hit, sort_hits

DEFAULT_LTR_TOP = 200


def ltr_order(hits: Sequence[Hit], scores: np.ndarray) -> list[Hit]:
    """``hits`` reordered by the model's ``scores`` (one per hit), ties by product id."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.shape[0] != len(hits):
        raise ValueError(f"{len(hits)} candidates but {scores.shape[0]} model scores")
    return sort_hits(
        [Hit(h.product_id, float(s), {**h.scores, "ltr": float(s)}) for h, s in zip(hits, scores)]
    )


class LTRRetriever:
    """``first_stage``'s top ``top`` candidates, reordered by ``model``.

    ``analyse`` gives a query's analysed terms (the BM25 stage's), ``featurizer`` the feature
    matrix of its candidates; training (``ltr.train``) calls :meth:`candidates` and
    :meth:`features`, so a model is trained on exactly the features it is served with."""

    name = "ltr"

    def __init__(
        self,
        first_stage: Retriever,
        model: LTRModel | None,
        featurizer: Featurizer,
        analyse: Callable[[str], list[str]],
        top: int = DEFAULT_LTR_TOP,
    ) -> None:
        if top < 1:
            raise ValueError(f"the LTR stage's candidate count must be >= 1, got {top}")
        self.first_stage = first_stage
        self.model = model
        self.featurizer = featurizer
        self.analyse = analyse
        self.top = top

    def candidates(
        self,
        queries: Sequence[str],
        filters: Filters | None = None,
        *,
        timings: Timings | None = None,
    ) -> list[list[Hit]]:
        """The first stage's ``top`` candidates of each query, in its order."""
        return self.first_stage.search(queries, self.top, filters, timings=timings)

    def features(self, query: str, hits: Sequence[Hit]) -> np.ndarray:
        """``(len(hits), len(FEATURES))`` for one query's candidates."""
        return self.featurizer.matrix(query, self.analyse(query), hits)

    def search(
        self,
        queries: Sequence[str],
        k: int = 10,
        filters: Filters | None = None,
        *,
        timings: Timings | None = None,
    ) -> list[list[Hit]]:
        if self.model is None:
            raise ValueError("this LTR stage has no model; train one with `search-cli train-ltr`")
        results = []
        for query, hits in zip(queries, self.candidates(queries, filters, timings=timings)):
            with timed(timings, "ltr"):
                scores = self.model.predict(self.features(query, hits))
                results.append(ltr_order(hits, scores)[:k])
        return results
