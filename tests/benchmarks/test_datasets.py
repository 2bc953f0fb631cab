"""Labelled data set loaders (BEIR, ESCI, WANDS, Multi-CPR, Home Depot) and layout detection,
on tiny fixtures in each exact format."""

from __future__ import annotations

from pathlib import Path

import pytest

from shopsearch.benchmarks.datasets import (
    ESCI_EXAMPLES,
    ESCI_PRODUCTS,
    LabelledSet,
    detect_format,
    load_beir,
    load_dataset,
    load_esci,
    load_homedepot,
    load_multicpr,
    load_wands,
)
from shopsearch.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures"


# ------------------------------------------------------------------ data sets


def test_load_beir():
    data = load_beir(FIXTURES / "beir")
    assert isinstance(data, LabelledSet)
    assert data.name == "beir-test"
    assert data.queries == {"1": "wireless mouse", "2": "无线鼠标"}  # only judged in test
    assert data.qrels == {"1": {"d1": 1}, "2": {"d2": 2, "d1": 1}}
    assert data.products[0] == {
        "id": "d1",
        "title": "Logitech M185 Wireless Mouse",
        "description": "Compact wireless mouse with USB receiver",
    }
    # No title: the text becomes the title.
    assert data.products[1] == {"id": "d2", "title": "罗技 无线鼠标 办公 静音"}
    assert load_beir(FIXTURES / "beir", split="dev").queries == {"3": "usb c cable"}
    with pytest.raises(DataError, match=r"qrels.*train\.tsv.*not found"):
        load_beir(FIXTURES / "beir", split="train")


def _write_esci(folder: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    examples = pa.table(
        {
            "example_id": [0, 1, 2, 3, 4, 5, 6],
            "query": [
                "iphone case",
                "iphone case",
                "iphone case",
                "usb cable",
                "usb cable",
                "funda iphone",
                "iphone case",
            ],
            "query_id": [10, 10, 10, 11, 11, 12, 10],
            "product_id": ["B01", "B02", "B03", "B04", "B01", "B05", "B06"],
            "product_locale": ["us", "us", "us", "us", "us", "es", "us"],
            "esci_label": ["E", "S", "I", "C", "I", "E", "E"],
            "small_version": [1, 1, 0, 1, 1, 1, 0],
            "large_version": [1] * 7,
            "split": ["test", "test", "test", "test", "test", "test", "train"],
        }
    )
    products = pa.table(
        {
            "product_id": ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B01"],
            "product_title": [
                "Clear iPhone 13 Case",
                "iPhone 13 Silicone Case",
                "Phone Stand",
                "USB-C Cable 2m",
                "Funda iPhone",
                "Leather iPhone Case",
                "Unjudged Lamp",
                "Funda transparente",
            ],
            "product_description": [
                "Slim clear case",
                None,
                "",
                "Fast charging",
                None,
                None,
                "Desk lamp",
                "Funda",
            ],
            "product_bullet_point": [
                None,
                "Soft touch\nDrop tested",
                None,
                None,
                None,
                None,
                None,
                None,
            ],
            "product_brand": ["Spigen", "Apple", None, "Anker", None, None, "IKEA", None],
            "product_color": ["Clear", None, "Black", None, None, None, None, None],
            "product_locale": ["us", "us", "us", "us", "es", "us", "us", "es"],
        }
    )
    pq.write_table(examples, folder / ESCI_EXAMPLES)
    pq.write_table(products, folder / ESCI_PRODUCTS)


@pytest.fixture
def esci_folder(tmp_path):
    pytest.importorskip("pyarrow")
    _write_esci(tmp_path)
    return tmp_path


def test_load_esci_grades_split_and_locale(esci_folder):
    data = load_esci(esci_folder)
    assert data.name == "esci-us-test"
    assert data.queries == {"10": "iphone case", "11": "usb cable"}
    assert data.qrels == {"10": {"B01": 3, "B02": 2, "B03": 0}, "11": {"B04": 1, "B01": 0}}
    ids = [p["id"] for p in data.products]
    assert ids == ["B01", "B02", "B03", "B04", "B06", "B07"]  # every us product, once
    by_id = {p["id"]: p for p in data.products}
    assert by_id["B01"] == {
        "id": "B01",
        "title": "Clear iPhone 13 Case",
        "description": "Slim clear case",
        "brand": "Spigen",
        "attributes": {"color": "Clear"},
    }
    assert by_id["B02"]["description"] == "Soft touch\nDrop tested"  # bullet points fallback
    assert by_id["B03"] == {"id": "B03", "title": "Phone Stand", "attributes": {"color": "Black"}}


def test_load_esci_options(esci_folder):
    small = load_esci(esci_folder, small=True)
    assert small.qrels == {"10": {"B01": 3, "B02": 2}, "11": {"B04": 1, "B01": 0}}
    judged = load_esci([esci_folder / ESCI_EXAMPLES, esci_folder / ESCI_PRODUCTS], corpus="judged")
    assert sorted(p["id"] for p in judged.products) == ["B01", "B02", "B03", "B04"]
    es = load_esci(esci_folder, locale="es")
    assert es.qrels == {"12": {"B05": 3}}
    assert [p["title"] for p in es.products] == ["Funda iPhone", "Funda transparente"]
    train = load_esci(esci_folder, split="train")
    assert train.qrels == {"10": {"B06": 3}}
    with pytest.raises(DataError, match="no examples with split='validation'"):
        load_esci(esci_folder, split="validation")


def test_load_esci_errors(tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pytest.raises(DataError, match="ESCI examples file not found"):
        load_esci(tmp_path)
    pq.write_table(pa.table({"query_id": [1], "query": ["x"]}), tmp_path / ESCI_EXAMPLES)
    pq.write_table(pa.table({"product_id": ["a"]}), tmp_path / ESCI_PRODUCTS)
    with pytest.raises(
        DataError,
        match=r"field 'product_id': missing column\(s\) product_id, "
        r"esci_label",
    ):
        load_esci(tmp_path)


def test_load_wands_tab_separated_with_quotes():
    data = load_wands(FIXTURES / "wands")
    assert data.name == "wands"
    assert data.queries == {"0": "salon chair", "1": 'fawkes 36" vanity'}  # judged only
    assert data.qrels == {"0": {"2": 2, "0": 0}, "1": {"1": 2, "0": 1}}
    assert data.products[0] == {
        "id": "0",
        "title": "solid wood platform bed",
        "description": "good, deep sleep",
        "category": "Beds",
    }
    assert data.products[1] == {
        "id": "1",
        "title": 'fawkes 36" blue vanity',
        "category": "Vanities",
    }


def test_load_wands_bad_label(tmp_path):
    for name in ("product.csv", "query.csv"):
        (tmp_path / name).write_bytes((FIXTURES / "wands" / name).read_bytes())
    (tmp_path / "label.csv").write_text("id\tquery_id\tproduct_id\tlabel\n0\t0\t2\tGood\n")
    with pytest.raises(DataError, match=r"label\.csv:2, field 'label': unknown label 'Good'"):
        load_wands(tmp_path)


def test_load_multicpr_four_and_two_column_qrels():
    dev = load_multicpr(FIXTURES / "multicpr")
    assert dev.name == "multicpr-multicpr-dev"
    assert dev.queries == {"100": "无线鼠标", "101": "机械键盘"}
    assert dev.qrels == {"100": {"1": 1}, "101": {"2": 1}}
    assert dev.products == [
        {"id": "1", "title": "无线鼠标 静音 办公"},
        {"id": "2", "title": "机械键盘 青轴"},
        {"id": "3", "title": "蓝牙耳机 降噪"},
    ]
    train = load_multicpr(FIXTURES / "multicpr", split="train")
    assert train.queries == {"200": "降噪耳机"} and train.qrels == {"200": {"3": 1}}


def test_load_homedepot_layout():
    data = load_homedepot(FIXTURES / "homedepot")
    assert data.name == "homedepot-dev"
    assert data.queries == {"hd1": "shower only faucet", "hd2": "deck paint"}
    assert data.qrels == {"hd1": {"100005": 2, "100001": 0}, "hd2": {"100002": 1}}
    assert data.products[1] == {
        "id": "100002",
        "title": "BEHR Premium Textured DeckOver 1-gal. Tugboat Wood Coating",
        "brand": "BEHR",
    }
    assert data.summary()["judgements"] == 3


def test_load_dataset_detects_layouts(esci_folder):
    assert detect_format(FIXTURES / "beir") == "beir"
    assert detect_format(FIXTURES / "wands") == "wands"
    assert detect_format(FIXTURES / "multicpr") == "multicpr"
    assert detect_format(FIXTURES / "homedepot") == "shopsearch"
    assert detect_format(esci_folder) == "esci"
    assert load_dataset(FIXTURES / "beir").name == "beir-test"
    assert load_dataset(FIXTURES / "multicpr", "train").name == "multicpr-multicpr-train"
    assert (
        load_dataset(FIXTURES / "homedepot").queries
        == load_homedepot(FIXTURES / "homedepot").queries
    )
    assert load_dataset(esci_folder).name == "esci-us-test"
    assert load_dataset(FIXTURES / "wands").name == "wands"
    with pytest.raises(DataError, match="WANDS has no splits"):
        load_dataset(FIXTURES / "wands", "test")
    with pytest.raises(DataError, match="unrecognised data set layout"):
        load_dataset(FIXTURES)
    with pytest.raises(DataError, match="data set folder not found"):
        load_dataset("no-such-dataset")


def test_load_dataset_by_name_uses_data_root(tmp_path, monkeypatch):
    target = tmp_path / "homedepot"
    target.mkdir()
    for f in (FIXTURES / "homedepot").iterdir():
        (target / f.name).write_bytes(f.read_bytes())
    monkeypatch.setenv("SHOPSEARCH_DATA", str(tmp_path))
    monkeypatch.chdir(tmp_path.parent)
    assert load_dataset("homedepot").qrels["hd2"] == {"100002": 1}


@pytest.mark.slow
def test_load_real_homedepot_dev():
    root = Path(__file__).resolve().parents[3] / "shared" / "data" / "homedepot"
    if not root.is_dir():
        pytest.skip(f"{root} not available")
    data = load_dataset(root, "dev")
    assert len(data.products) == 54667
    assert len(data.queries) == len(data.qrels) == 1181
    assert sum(len(d) for d in data.qrels.values()) == 7610
    assert all(g in (0, 1, 2) for d in data.qrels.values() for g in d.values())


def test_load_esci_unknown_label(tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table(
            {
                "query_id": [1],
                "query": ["x"],
                "product_id": ["a"],
                "esci_label": ["X"],
                "split": ["test"],
                "product_locale": ["us"],
            }
        ),
        tmp_path / ESCI_EXAMPLES,
    )
    pq.write_table(
        pa.table({"product_id": ["a"], "product_locale": ["us"], "product_title": ["A"]}),
        tmp_path / ESCI_PRODUCTS,
    )
    with pytest.raises(
        DataError,
        match=r"field 'esci_label': unknown esci_label 'X' for query "
        r"'1', product 'a'",
    ):
        load_esci(tmp_path)
