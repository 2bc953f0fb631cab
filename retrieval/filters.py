"""Catalogue filters (category, price range), compiled once per index into arrays.

A filtered query must cost a vectorised mask, not a loop over every product: the catalogue's
categories become integer codes and its prices a float array when the index is opened, and
each query only looks up codes and compares arrays. The mask is applied *inside* both
retrievers (BM25 masks rows before its top-k, FAISS gets an ID selector), so a filtered query
still returns k products when k qualify.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from shopsearch.errors import SearchError
from shopsearch.retrieval.types import Product


@dataclass(frozen=True)
class Filters:
    """Category (case-insensitive: the whole category or one ``>``/``/`` level of it) and an
    inclusive price range. Products without a price fail any price filter."""

    category: str | None = None
    min_price: float | None = None
    max_price: float | None = None

    def __post_init__(self) -> None:
        if (
            self.min_price is not None
            and self.max_price is not None
            and self.min_price > self.max_price
        ):
            raise SearchError(f"--min-price {self.min_price} is above --max-price {self.max_price}")

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.category, self.min_price, self.max_price))

    def to_dict(self) -> dict[str, object]:
        return {"category": self.category, "min_price": self.min_price, "max_price": self.max_price}


def category_keys(category: str) -> set[str]:
    """What a category filter may name to select ``category``: its whole name or any one of
    its levels (``Home > Bedroom/Beds`` answers to ``bedroom`` and ``beds``), casefolded."""
    full = category.casefold()
    return {full} | {part.strip() for part in full.replace("/", ">").split(">")}


class FilterIndex:
    """The catalogue fields filters test, as arrays over catalogue rows."""

    def __init__(self, products: Sequence[Product]) -> None:
        names: dict[str, int] = {}
        self._category_codes = np.array(
            [names.setdefault(p.category, len(names)) for p in products], dtype=np.int32
        )
        by_key: dict[str, list[int]] = {}
        for name, code in names.items():
            for key in category_keys(name):
                by_key.setdefault(key, []).append(code)
        self._codes_by_key = {key: np.array(codes, dtype=np.int32) for key, codes in by_key.items()}
        self._prices = np.array(
            [np.nan if p.price is None else p.price for p in products], dtype=np.float64
        )

    def __len__(self) -> int:
        return len(self._prices)

    def knows_category(self, category: str) -> bool:
        """Whether a category filter of this name selects any product."""
        return category.strip().casefold() in self._codes_by_key

    def price_range(self) -> tuple[float, float] | None:
        """The lowest and highest price in the catalogue, None when no product has one."""
        priced = self._prices[~np.isnan(self._prices)]
        return (float(priced.min()), float(priced.max())) if priced.size else None

    def mask(self, filters: Filters | None) -> np.ndarray | None:
        """Boolean mask over catalogue rows, or None when nothing is filtered."""
        if filters is None or not filters.active:
            return None
        mask = np.ones(len(self._prices), dtype=bool)
        if filters.category is not None:
            codes = self._codes_by_key.get(filters.category.strip().casefold())
            if codes is None:
                return np.zeros(len(self._prices), dtype=bool)
            mask &= np.isin(self._category_codes, codes)
        if filters.min_price is not None or filters.max_price is not None:
            # NaN (no price) compares false, so unpriced products fail any price filter.
            with np.errstate(invalid="ignore"):
                if filters.min_price is not None:
                    mask &= self._prices >= filters.min_price
                if filters.max_price is not None:
                    mask &= self._prices <= filters.max_price
            mask &= ~np.isnan(self._prices)
        return mask
