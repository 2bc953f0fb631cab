"""Filters compiled into arrays select exactly the products the plain definition does."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shopsearch.retrieval.filters import FilterIndex, Filters, category_keys
from shopsearch.retrieval.types import Product


def reference_mask(products, filters):
    """The definition, one product at a time (what the engine did before compiling)."""
    out = []
    for p in products:
        ok = True
        if filters.category is not None:
            ok = filters.category.strip().casefold() in category_keys(p.category)
        if ok and (filters.min_price is not None or filters.max_price is not None):
            ok = (
                p.price is not None
                and (filters.min_price is None or p.price >= filters.min_price)
                and (filters.max_price is None or p.price <= filters.max_price)
            )
        out.append(ok)
    return np.array(out, dtype=bool)


CATEGORIES = [
    "",
    "Furniture > Beds",
    "furniture>Beds",
    "Home/Bedroom > Beds",
    "女装 > 连衣裙",
    "Beds",
    "Pet Supplies",
    "家具 > 床",
]
WANTED = [
    None,
    "beds",
    "BEDS ",
    "furniture",
    "bedroom",
    "连衣裙",
    "女装 > 连衣裙",
    "床",
    "toys",
    "pet supplies",
    "home/bedroom > beds",
]
prices = st.one_of(st.none(), st.floats(min_value=0, max_value=1000, allow_nan=False))


@settings(max_examples=200, deadline=None)
@given(
    catalogue=st.lists(st.tuples(st.sampled_from(CATEGORIES), prices), min_size=1, max_size=30),
    wanted=st.sampled_from(WANTED),
    low=prices,
    high=prices,
)
def test_compiled_mask_equals_the_definition(catalogue, wanted, low, high):
    if low is not None and high is not None and low > high:
        low, high = high, low
    products = [
        Product(id=f"p{i}", title="t", category=c, price=p) for i, (c, p) in enumerate(catalogue)
    ]
    filters = Filters(category=wanted, min_price=low, max_price=high)
    mask = FilterIndex(products).mask(filters)
    if not filters.active:
        assert mask is None
    else:
        np.testing.assert_array_equal(mask, reference_mask(products, filters))


def test_levels_and_unknown_categories():
    products = [
        Product("a", "t", category="Home > Bedroom/Beds", price=10.0),
        Product("b", "t", category="Toys", price=None),
    ]
    index = FilterIndex(products)
    assert index.mask(Filters(category="bedroom")).tolist() == [True, False]
    assert index.mask(Filters(category="nothing")).tolist() == [False, False]
    # Unpriced products fail any price filter, even an open-ended one.
    assert index.mask(Filters(min_price=0)).tolist() == [True, False]
    assert index.mask(None) is None and index.mask(Filters()) is None


def test_price_range_is_checked():
    from shopsearch.errors import SearchError

    with pytest.raises(SearchError, match="above"):
        Filters(min_price=3, max_price=2)
