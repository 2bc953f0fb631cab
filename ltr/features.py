"""Features of one (query, candidate) pair for the learning-to-rank stage: pure functions.

Every feature is a float; a score a candidate does not have (it came from only one of the two
first-stage lists, or lies below the reranked head) is 0 with a 1 in its ``*_missing``
indicator, so that the model can tell "absent" from "low". Terms are the index's own analysed
terms (jieba search mode for Chinese, stemmed English; the manifest's analyser, measures
normalised or not), so the text features mean the same in both languages.

====================  =======================================================================
feature               what it is
====================  =======================================================================
bm25                  the candidate's BM25 score (0 when BM25 did not retrieve it)
bm25_rank             its 1-based rank in BM25's list (0 when missing)
bm25_ratio            bm25 / the best BM25 score among the query's candidates (query-normalised)
bm25_missing          1 when BM25 did not retrieve it
dense                 cosine of query and product vectors (0 when dense did not retrieve it)
dense_rank            its rank in the dense list (0 when missing)
dense_missing         1 when the dense retriever did not retrieve it (always on a BM25 index)
fused                 the fused score (RRF or convex)
fused_rank            its rank in the fused list
input_rank            its rank in the list the stage reorders (reranked order under a reranker)
click_logit           the cross-encoder's click logit (0 below the reranked head, or without one)
click_missing         1 when there is no click logit
query_terms           number of analysed query terms
title_terms           number of analysed title terms
matched_share         share of distinct query terms found anywhere in the product's text
title_matched_share   share of distinct query terms found in the title
all_in_title          1 when every query term is in the title
bigram_matches        query bigrams (adjacent term pairs) that occur adjacent in the title
bigram_share          bigram_matches / query bigrams (0 for one-term queries)
phrase_in_title       1 when the query's terms occur in the title as one contiguous run
numbers_query         query terms with a digit (sizes, model numbers)
numbers_matched       share of those found in the product's text
measures_query        measures in the query (``36in``, ``0.5in``, ``2x4``: ``retrieval.units``)
measures_matched      share of the query's measures the product's text has
measures_conflict     1 when the product gives another value of a unit the query measures in
                      (query ``36in``, title ``30in`` and no ``36in``)
brand_match           1 when a query term is in the product's brand
has_brand             1 when the product has a brand
category_match        share of distinct query terms found in the product's category
====================  =======================================================================

Measures are read from the raw text with ``retrieval.units.measure_terms`` whatever the index's
analyser, so ``1/2 in.`` in a title and ``1/2 inch`` in a query match here even when BM25
(an index built without ``--normalise-units``) sees different terms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from shopsearch.retrieval.types import Hit, Product
from shopsearch.retrieval.units import measure_terms, split_measure

FEATURES: tuple[str, ...] = (
    "bm25",
    "bm25_rank",
    "bm25_ratio",
    "bm25_missing",
    "dense",
    "dense_rank",
    "dense_missing",
    "fused",
    "fused_rank",
    "input_rank",
    "click_logit",
    "click_missing",
    "query_terms",
    "title_terms",
    "matched_share",
    "title_matched_share",
    "all_in_title",
    "bigram_matches",
    "bigram_share",
    "phrase_in_title",
    "numbers_query",
    "numbers_matched",
    "measures_query",
    "measures_matched",
    "measures_conflict",
    "brand_match",
    "has_brand",
    "category_match",
)

Tokenize = Callable[[str], list[str]]


@dataclass(frozen=True)
class QueryView:
    """What the text features need of a query: its analysed terms in order and its measures."""

    terms: tuple[str, ...]
    measures: frozenset[str]


@dataclass(frozen=True)
class ProductView:
    """What the text features need of a product: title terms in order, the set of all its
    terms, brand and category terms, and the measures of its text."""

    title: tuple[str, ...]
    text: frozenset[str]
    brand: frozenset[str]
    category: frozenset[str]
    measures: frozenset[str]
    has_brand: bool


def query_view(query: str, terms: Sequence[str]) -> QueryView:
    """``terms``: the query's analysed terms as BM25 sees them (``SearchEngine.analyse``)."""
    return QueryView(tuple(terms), frozenset(measure_terms(query)))


def product_view(product: Product, tokenize: Tokenize) -> ProductView:
    return ProductView(
        title=tuple(tokenize(product.title)),
        text=frozenset(tokenize(product.text())),
        brand=frozenset(tokenize(product.brand)) if product.brand else frozenset(),
        category=frozenset(tokenize(product.category)) if product.category else frozenset(),
        measures=frozenset(measure_terms(product.text())),
        has_brand=bool(product.brand),
    )


def _share(wanted: set[str] | frozenset[str], found: frozenset[str] | set[str]) -> float:
    return len(wanted & found) / len(wanted) if wanted else 0.0


def _contains_run(haystack: Sequence[str], needle: Sequence[str]) -> bool:
    n = len(needle)
    if n == 0 or n > len(haystack):
        return False
    return any(tuple(haystack[i : i + n]) == tuple(needle) for i in range(len(haystack) - n + 1))


def measures_conflict(query: frozenset[str], product: frozenset[str]) -> bool:
    """Whether the product states a unit the query measures in, but never the query's value:
    a 30 in. vanity for "36 in vanity". Dimensions (``2x4``) conflict with other dimensions
    of as many parts."""

    def unit(term: str) -> str:
        measure = split_measure(term)
        return measure[1] if measure else f"dim{term.count('x')}"

    for term in query:
        if term in product:
            continue
        if any(unit(other) == unit(term) for other in product):
            return True
    return False


def text_features(query: QueryView, product: ProductView) -> dict[str, float]:
    """The features that compare a query's text with a product's (see the module table)."""
    wanted = set(query.terms)
    title_set = frozenset(product.title)
    bigrams = list(zip(query.terms, query.terms[1:]))
    title_bigrams = set(zip(product.title, product.title[1:]))
    bigram_hits = sum(1 for b in bigrams if b in title_bigrams)
    numbers = {t for t in wanted if any(c.isdigit() for c in t)}
    return {
        "query_terms": float(len(query.terms)),
        "title_terms": float(len(product.title)),
        "matched_share": _share(wanted, product.text),
        "title_matched_share": _share(wanted, title_set),
        "all_in_title": float(bool(wanted) and wanted <= title_set),
        "bigram_matches": float(bigram_hits),
        "bigram_share": bigram_hits / len(bigrams) if bigrams else 0.0,
        "phrase_in_title": float(_contains_run(product.title, query.terms)),
        "numbers_query": float(len(numbers)),
        "numbers_matched": _share(numbers, product.text),
        "measures_query": float(len(query.measures)),
        "measures_matched": _share(query.measures, product.measures),
        "measures_conflict": float(measures_conflict(query.measures, product.measures)),
        "brand_match": float(bool(wanted & product.brand)),
        "has_brand": float(product.has_brand),
        "category_match": _share(wanted, product.category),
    }


def _ranks(hits: Sequence[Hit], key: str) -> dict[str, int]:
    """1-based rank of each hit that has ``scores[key]``, by ``(-score, product id)``: the order
    of that stage's own list (every candidate of a list it retrieved is among the hits)."""
    scored = sorted((-h.scores[key], h.product_id) for h in hits if key in h.scores)
    return {pid: rank for rank, (_, pid) in enumerate(scored, start=1)}


def score_features(hits: Sequence[Hit]) -> list[dict[str, float]]:
    """The features from the first stages' scores, one dict per hit in ``hits`` order (the
    order the LTR stage reorders: ``input_rank`` is the position in it)."""
    ranks = {key: _ranks(hits, key) for key in ("bm25", "dense", "fused")}
    best_bm25 = max((h.scores["bm25"] for h in hits if "bm25" in h.scores), default=0.0)
    rows = []
    for position, hit in enumerate(hits, start=1):
        row: dict[str, float] = {"input_rank": float(position)}
        for key in ("bm25", "dense", "fused"):
            present = key in hit.scores
            row[key] = float(hit.scores[key]) if present else 0.0
            row[f"{key}_rank"] = float(ranks[key].get(hit.product_id, 0))
            if key != "fused":
                row[f"{key}_missing"] = 0.0 if present else 1.0
        row["bm25_ratio"] = row["bm25"] / best_bm25 if best_bm25 > 0 else 0.0
        logit = hit.scores.get("click_logit")
        row["click_logit"] = float(logit) if logit is not None else 0.0
        row["click_missing"] = 0.0 if logit is not None else 1.0
        rows.append(row)
    return rows


def feature_matrix(
    query: QueryView, hits: Sequence[Hit], products: Sequence[ProductView]
) -> np.ndarray:
    """Features of one query's candidates, shape ``(len(hits), len(FEATURES))`` float64,
    columns in ``FEATURES`` order; ``products[i]`` is the view of ``hits[i]``'s product."""
    if len(products) != len(hits):
        raise ValueError(f"{len(hits)} hits but {len(products)} product views")
    out = np.zeros((len(hits), len(FEATURES)), dtype=np.float64)
    for i, (scores, product) in enumerate(zip(score_features(hits), products)):
        row = {**scores, **text_features(query, product)}
        out[i] = [row[name] for name in FEATURES]
    return out


class Featurizer:
    """Feature matrices for an index's candidates: product views are computed on first use
    and kept (one per product asked about), so a query costs its candidates' text features."""

    def __init__(self, product: Callable[[str], Product], tokenize: Tokenize) -> None:
        self.product = product
        self.tokenize = tokenize
        self._views: dict[str, ProductView] = {}

    def view(self, product_id: str) -> ProductView:
        view = self._views.get(product_id)
        if view is None:
            view = self._views[product_id] = product_view(self.product(product_id), self.tokenize)
        return view

    def knows(self, product_id: str) -> bool:
        """Whether ``product_id`` is in the catalogue."""
        try:
            self.view(product_id)
        except KeyError:
            return False
        return True

    def matrix(self, query: str, terms: Sequence[str], hits: Sequence[Hit]) -> np.ndarray:
        """``(len(hits), len(FEATURES))``; ``terms``: the query's analysed terms."""
        return feature_matrix(
            query_view(query, terms), hits, [self.view(h.product_id) for h in hits]
        )
