"""What one served search returns: hits with their products, and how they were found."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shopsearch.retrieval.types import Hit, Product


@dataclass
class SearchResult:
    """One query's answer. ``stage`` is the pipeline stage that produced ``hits``;
    ``timings_ms`` holds milliseconds per step plus "total"; ``matched_terms`` (with
    ``explain``) maps a product id to the query's BM25 terms found in its text."""

    query: str
    stage: str
    hits: list[Hit]
    products: dict[str, Product]
    query_terms: list[str]
    timings_ms: dict[str, float] = field(default_factory=dict)
    matched_terms: dict[str, list[str]] = field(default_factory=dict)
    reranked: bool = False
    calibrated: bool = False
    notes: list[str] = field(default_factory=list)
    # Spelling corrections of query terms ("did you mean"), each {"term", "suggestion",
    # "distance"}; the original terms are searched too.
    corrections: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``search-cli query --json``: each result's product fields, its
        ``score`` (the stage's sort key) and every stage's own score by name."""
        results = []
        for rank, hit in enumerate(self.hits, start=1):
            product = self.products[hit.product_id]
            entry: dict[str, Any] = {
                "rank": rank,
                "id": hit.product_id,
                "title": product.title,
                "price": product.price,
                "category": product.category,
                "score": hit.score,
                **hit.scores,
            }
            if hit.product_id in self.matched_terms:
                entry["matched_terms"] = self.matched_terms[hit.product_id]
            results.append(entry)
        return {
            "query": self.query,
            "stage": self.stage,
            "query_terms": self.query_terms,
            "reranked": self.reranked,
            "calibrated": self.calibrated,
            "notes": self.notes,
            **({"did_you_mean": self.corrections} if self.corrections else {}),
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            "results": results,
        }
