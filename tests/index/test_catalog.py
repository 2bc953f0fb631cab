import json

import pytest

from shopsearch.errors import DataError
from shopsearch.index.catalog import catalog_hash, read_catalog


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_the_fixture(products):
    assert len(products) == 12
    assert products[0].title.startswith("夏季") and products[0].price == 199.0
    assert products[0].attributes["season"] == "summer"


def test_csv_with_attributes_json(tmp_path):
    path = write(
        tmp_path,
        "c.csv",
        'id,title,price,attributes\n1,"Bed, king",10.5,"{""size"": ""king""}"\n2,床,,\n',
    )
    products = read_catalog(path)
    assert products[0].title == "Bed, king" and products[0].attributes == {"size": "king"}
    assert products[1].price is None


@pytest.mark.parametrize(
    "text, match",
    [
        ('{"id": "1", "title": "ok"}\n{"id": "2", "title": }\n', r"c.jsonl:2: malformed JSON"),
        ('{"title": "no id"}\n', r"c.jsonl:1, field 'id': missing"),
        ('{"id": "1", "title": "  "}\n', r"c.jsonl:1, field 'title'"),
        (
            '{"id": "1", "title": "a"}\n\n{"id": "1", "title": "b"}\n',
            r"c.jsonl:3, field 'id': duplicate product id '1' \(first seen on line 1\)",
        ),
        (
            '{"id": "1", "title": "a", "price": "cheap"}\n',
            r"c.jsonl:1, field 'price': price must be a number",
        ),
        ('{"id": "1", "title": "a", "price": -3}\n', r"field 'price'"),
        ('{"id": "1", "title": "a", "attributes": [1]}\n', r"field 'attributes'"),
        ("[1, 2]\n", r"c.jsonl:1: each line must be a JSON object"),
        ("\n\n", r"c.jsonl: the catalogue is empty"),
    ],
)
def test_bad_jsonl_names_file_line_and_field(tmp_path, text, match):
    with pytest.raises(DataError, match=match):
        read_catalog(write(tmp_path, "c.jsonl", text))


def test_bad_csv(tmp_path):
    with pytest.raises(DataError, match=r"c.csv:3, field 'price'"):
        read_catalog(write(tmp_path, "c.csv", "id,title,price\n1,a,2\n2,b,x\n"))
    with pytest.raises(DataError, match="header must name"):
        read_catalog(write(tmp_path, "d.csv", "sku,name\n1,a\n"))
    with pytest.raises(DataError, match=r"e.csv:2: more values"):
        read_catalog(write(tmp_path, "e.csv", "id,title\n1,a,b\n"))


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_catalog(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="unknown catalogue format"):
        read_catalog(write(tmp_path, "c.xml", "<x/>"))


def test_hash_ignores_order_and_format(tmp_path, products):
    records = [p.to_dict() for p in reversed(products)]
    path = write(
        tmp_path, "r.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    )
    assert catalog_hash(read_catalog(path)) == catalog_hash(products)
