"""Plain data types shared by every stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Product:
    """One catalogue entry. Only ``id`` and ``title`` are required."""

    id: str
    title: str
    description: str = ""
    brand: str = ""
    category: str = ""
    price: float | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        """The text both BM25 and the product tower see: title first, then the rest."""
        parts = [self.title, self.brand, self.category, self.description]
        parts += [f"{k} {v}" for k, v in self.attributes.items()]
        return " ".join(p for p in parts if p)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "title": self.title}
        for name in ("description", "brand", "category"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        if self.price is not None:
            out["price"] = self.price
        if self.attributes:
            out["attributes"] = dict(self.attributes)
        return out


@dataclass
class Hit:
    """A product returned for a query.

    ``score`` is the score of the stage that produced the list; ``scores`` keeps every stage's
    score by name ("bm25", "dense", "fused", "click_probability") so the CLI can show them all.
    """

    product_id: str
    score: float
    scores: dict[str, float] = field(default_factory=dict)


def sort_hits(hits: list[Hit]) -> list[Hit]:
    """Order by descending score, ties broken by product id so results are deterministic."""
    return sorted(hits, key=lambda h: (-h.score, h.product_id))
