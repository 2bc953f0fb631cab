"""The synthetic demo catalogue: determinism, size, coverage and bilingual balance."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from shopsearch.demo.catalog import (
    CATEGORIES,
    TYPES,
    VOCAB,
    generate_catalog,
    product_facets,
    write_catalog_jsonl,
)
from shopsearch.errors import DataError
from shopsearch.retrieval.analysis import contains_cjk
from shopsearch.retrieval.types import Product

# sha256 of write_catalog_jsonl(generate_catalog()) -- the default demo catalogue. If you change
# the generator's tables or logic ON PURPOSE, recompute it and update this value in the same
# commit (and say so in the commit message: every demo index, click log and benchmark number
# built from the old catalogue is then stale). If it changed by accident, fix the code instead.
DEFAULT_CATALOG_SHA256 = "2dc2daed376246eda3513dffc94e07ba83064f94d56b5fb026a2544c6fbfce9b"


@pytest.fixture(scope="module")
def catalog() -> list[Product]:
    return generate_catalog()


def test_same_arguments_same_catalogue_other_seed_differs(catalog):
    assert generate_catalog() == catalog
    assert generate_catalog(seed=8) != catalog
    assert generate_catalog(50, seed=3) == generate_catalog(50, seed=3)


def test_jsonl_output_matches_the_recorded_hash(catalog, tmp_path):
    path = write_catalog_jsonl(catalog, tmp_path / "demo.jsonl")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == DEFAULT_CATALOG_SHA256


def test_jsonl_is_one_utf8_object_per_product(catalog, tmp_path):
    path = write_catalog_jsonl(catalog[:5], tmp_path / "five.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [p.to_dict() for p in catalog[:5]]
    text = path.read_text(encoding="utf-8")
    assert "\\u" not in text  # ensure_ascii=False: Chinese is written as itself


def test_size_ids_and_categories(catalog):
    assert len(catalog) == 2400
    ids = [p.id for p in catalog]
    assert len(set(ids)) == len(ids)
    assert ids[0] == "P000001" and ids[-1] == "P002400"
    assert all(re.fullmatch(r"P\d{6}", i) for i in ids)
    categories = {product_facets(p)["category"] for p in catalog}
    assert categories == set(CATEGORIES) and len(categories) >= 15
    assert {product_facets(p)["type"] for p in catalog} == set(TYPES)


def test_n_products_is_respected_and_checked():
    assert len(generate_catalog(37)) == 37
    with pytest.raises(ValueError, match="positive integer"):
        generate_catalog(0)


def test_both_languages_in_substantial_proportions(catalog):
    zh = [p for p in catalog if contains_cjk(p.title)]
    assert 0.4 <= len(zh) / len(catalog) <= 0.6
    # The language a product was generated in is the language of its title and category.
    for p in catalog:
        lang = product_facets(p)["lang"]
        assert contains_cjk(p.title) == (lang == "zh") == contains_cjk(p.category)
    # Mixed titles: Latin brands, models and sizes inside Chinese titles.
    mixed = [p for p in zh if re.search("[A-Za-z]", p.title)]
    assert len(mixed) >= 0.2 * len(zh)
    titles = " ".join(p.title for p in catalog)
    for token in ("iPhone15", "XL", "1.8m", "2x4"):
        assert token in titles


def test_prices_positive_and_plausible_per_type(catalog):
    for p in catalog:
        lo, hi = TYPES[product_facets(p)["type"]].price
        assert isinstance(p.price, float) and p.price > 0
        assert lo - 1 <= p.price <= hi + 1


def test_attributes_have_english_keys_and_type(catalog):
    for p in catalog:
        assert "type" in p.attributes
        assert all(re.fullmatch(r"[a-z_]+", k) for k in p.attributes)
        assert p.brand and p.description


def test_vocabulary_surfaces_decode_unambiguously():
    # product_facets relies on every surface word naming a single canonical value.
    for name, entries in VOCAB.items():
        seen: dict[str, str] = {}
        for entry in entries:
            for surface in [
                *([entry[1]] if isinstance(entry[1], str) else entry[1]),
                *([entry[2]] if isinstance(entry[2], str) else entry[2]),
            ]:
                assert seen.setdefault(surface, entry[0]) == entry[0], (name, surface)
    names = [t.zh_name for t in TYPES.values()] + [t.en_name for t in TYPES.values()]
    assert len(set(names)) == len(names)


def test_facets_of_a_hand_written_product():
    p = Product(
        id="X1",
        title="夏季碎花雪纺连衣裙 女 中长款 白色 M码",
        attributes={
            "type": "连衣裙",
            "season": "夏季",
            "material": "雪纺",
            "pattern": "碎花",
            "color": "白色",
            "size": "M",
            "length": "中长款",
        },
    )
    assert product_facets(p) == {
        "category": "dresses",
        "type": "dress",
        "lang": "zh",
        "season": "summer",
        "material": "chiffon",
        "pattern": "floral",
        "color": "white",
        "size": "M",
        "length": "midi",
    }
    bed = Product(
        id="X2",
        title="Solid Wood King Four-Poster Bed, Walnut",
        attributes={
            "type": "Bed",
            "material": "Solid Wood",
            "style": "Four-Poster",
            "size": "King",
            "color": "Walnut",
        },
    )
    assert product_facets(bed)["style"] == "poster" and product_facets(bed)["size"] == "king"


def test_facets_reject_non_demo_products():
    with pytest.raises(DataError, match="not a demo product"):
        product_facets(Product(id="X", title="t", attributes={"type": "Spaceship"}))
    with pytest.raises(DataError, match="not a known season"):
        product_facets(
            Product(
                id="X",
                title="t",
                attributes={
                    "type": "Dress",
                    "season": "Monsoon",
                    "material": "Silk",
                    "pattern": "Solid",
                    "color": "Red",
                    "size": "M",
                    "length": "Mini",
                },
            )
        )


def test_dresses_and_beds_are_plentiful_in_both_languages(catalog):
    facets = [product_facets(p) for p in catalog]
    for type_, at_least in (("dress", 200), ("bed", 150)):
        for lang in ("zh", "en"):
            n = sum(f["type"] == type_ and f["lang"] == lang for f in facets)
            assert n >= at_least / 2, (type_, lang, n)
