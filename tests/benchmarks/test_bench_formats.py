"""Readers, writers and data set loaders on tiny fixtures in each exact format."""

from __future__ import annotations

from pathlib import Path

import pytest

from shopsearch.benchmarks.formats import (
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
    read_qrels,
    read_queries,
    read_run,
    write_qrels,
    write_queries,
    write_run,
)
from shopsearch.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures"


# ------------------------------------------------------------------ queries

def test_read_queries_tsv_skips_header_and_keeps_extra_tabs_in_text():
    queries = read_queries(FIXTURES / "queries.tsv")
    assert queries == {"q1": "wireless mouse", "q2": "无线 鼠标", "q3": "usb-c cable\tbraided"}
    assert list(queries) == ["q1", "q2", "q3"]


def test_read_queries_jsonl_accepts_id_and_text_key_variants():
    assert read_queries(FIXTURES / "queries.jsonl") == {
        "q1": "wireless mouse", "q2": "无线 鼠标", "3": "usb-c cable"}


def test_read_queries_detects_jsonl_by_content_and_strips_bom(tmp_path):
    path = tmp_path / "queries.data"
    path.write_text('\ufeff{"id": "a", "text": "sofa"}\n\n', encoding="utf-8")
    assert read_queries(path) == {"a": "sofa"}
    tsv = tmp_path / "q.data"
    tsv.write_text("\ufeffa\tsofa\r\nb\tbed\r\n", encoding="utf-8")
    assert read_queries(tsv) == {"a": "sofa", "b": "bed"}


@pytest.mark.parametrize("content, match", [
    ("q1 no tab here\n", r"q\.tsv:1: expected 'query_id<TAB>query'"),
    ("q1\tsofa\nq1\tbed\n", r"q\.tsv:2, field 'query_id': .*twice with different texts"),
    ("q1\t   \n", r"q\.tsv:1, field 'query': query 'q1' has empty text"),
    ("\tsofa\n", r"q\.tsv:1, field 'query_id': empty identifier"),
])
def test_read_queries_tsv_errors_name_file_line_and_field(tmp_path, content, match):
    path = tmp_path / "q.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=match):
        read_queries(path)


def test_read_queries_jsonl_errors(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n{"id": "b"\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"q\.jsonl:2: invalid JSON"):
        read_queries(path)
    path.write_text('{"id": "a", "title": "x"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"q\.jsonl:1, field 'query': missing field"):
        read_queries(path)
    with pytest.raises(DataError, match="queries file not found"):
        read_queries(tmp_path / "missing.tsv")


def test_write_queries_round_trip(tmp_path):
    queries = {"q1": "wireless mouse", "q2": "无线 鼠标"}
    assert read_queries(write_queries(tmp_path / "q.tsv", queries)) == queries


# ------------------------------------------------------------------ qrels

def test_read_qrels_trec():
    qrels = read_qrels(FIXTURES / "qrels.txt")
    assert qrels["q1"] == {"p1": 2, "p2": 1, "p3": 0, "p4": 2}
    assert qrels["q3"] == {"p7": 2}
    assert qrels["q4"] == {"p8": 0}
    assert len(qrels) == 5 - 1  # q1..q4


def test_read_qrels_beir_tsv_with_header():
    assert read_qrels(FIXTURES / "qrels_beir.tsv") == {"q1": {"p1": 2, "p2": 1}, "q2": {"p5": 1}}


def test_read_qrels_matches_ir_measures_reader():
    import ir_measures

    ours = read_qrels(FIXTURES / "qrels.txt")
    theirs: dict[str, dict[str, int]] = {}
    for q in ir_measures.read_trec_qrels(str(FIXTURES / "qrels.txt")):
        theirs.setdefault(q.query_id, {})[q.doc_id] = q.relevance
    assert ours == theirs


@pytest.mark.parametrize("content, match", [
    ("q1 0 p1\n", r"qrels\.txt:1: expected 4 columns"),
    ("q1 0 p1 2\nq1 0 p2 high\n", r"qrels\.txt:2, field 'grade': relevance grade 'high' is not"),
    ("q1 0 p1 0.5\n", r"qrels\.txt:1, field 'grade': .*not an integer"),
    ("q1 0 p1 1\nq1 0 p1 2\n", r"qrels\.txt:2: query 'q1' judges product 'p1' twice"),
    ("\n\n", r"qrels\.txt: no judgements found"),
])
def test_read_qrels_errors(tmp_path, content, match):
    path = tmp_path / "qrels.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=match):
        read_qrels(path)


def test_read_qrels_tolerates_float_integral_grades_and_same_duplicate(tmp_path):
    path = tmp_path / "qrels.txt"
    path.write_text("q1 0 p1 2.0\nq1 0 p1 2\nq1\t0\tp2\t-1\n", encoding="utf-8")
    assert read_qrels(path) == {"q1": {"p1": 2, "p2": -1}}


def test_write_qrels_round_trip_and_format(tmp_path):
    qrels = {"q2": {"b": 1, "a": 0}, "q1": {"z": 2}}
    path = write_qrels(tmp_path / "out.txt", qrels)
    assert path.read_text() == "q2 0 a 0\nq2 0 b 1\nq1 0 z 2\n"
    assert read_qrels(path) == qrels
    with pytest.raises(ValueError, match="contains whitespace"):
        write_qrels(tmp_path / "bad.txt", {"q 1": {"a": 1}})


# ------------------------------------------------------------------ runs

def test_read_run():
    run = read_run(FIXTURES / "run.txt")
    assert run["q1"] == {"p3": 0.9, "p1": 0.8, "pX": 0.7, "p2": 0.5}
    assert run["q2"] == {"p5": 0.5, "p6": 0.5, "pY": 0.4}
    assert set(run) == {"q1", "q2", "q4", "q6"}


def test_write_run_sorts_by_score_then_id_and_ranks_from_one(tmp_path):
    results = {"q1": [("b", 0.5), ("c", 0.9), ("a", 0.5)], "q2": [], "q3": {"x": 1.0}}
    path = write_run(tmp_path / "r.run", results, tag="bm25")
    assert path.read_text().splitlines() == [
        "q1 Q0 c 1 0.9 bm25",
        "q1 Q0 a 2 0.5 bm25",
        "q1 Q0 b 3 0.5 bm25",
        "q3 Q0 x 1 1.0 bm25",
    ]


def test_write_run_keeps_scores_bit_exact(tmp_path):
    # Rounded to 6 decimals these would tie; written with repr they stay distinct.
    scores = [0.1 + 0.2, 0.3, 1 / 3, 1e-12, 12345.678901234567, -2.5e-7]
    results = {"q": [(f"d{i}", s) for i, s in enumerate(scores)]}
    run = read_run(write_run(tmp_path / "r.run", results, tag="t"))
    assert run == {"q": {f"d{i}": s for i, s in enumerate(scores)}}
    assert all(run["q"][f"d{i}"] == s for i, s in enumerate(scores))


def test_write_run_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="appears twice"):
        write_run(tmp_path / "r", {"q": [("a", 1.0), ("a", 0.5)]}, tag="t")
    with pytest.raises(ValueError, match="NaN"):
        write_run(tmp_path / "r", {"q": [("a", float("nan"))]}, tag="t")
    with pytest.raises(ValueError, match="run tag"):
        write_run(tmp_path / "r", {"q": [("a", 1.0)]}, tag="my run")


@pytest.mark.parametrize("content, match", [
    ("q1 Q0 p1 1 0.5\n", r"r\.run:1: expected 6 columns"),
    ("q1 Q0 p1 1 0.5 t\nq1 Q0 p2 2 high t\n", r"r\.run:2, field 'score': score 'high'"),
    ("q1 Q0 p1 first 0.5 t\n", r"r\.run:1, field 'rank'"),
    ("q1 Q0 p1 1 0.5 t\nq1 Q0 p1 2 0.4 t\n", r"r\.run:2, field 'product_id': .*twice"),
    ("q1 Q0 p1 1 nan t\n", r"r\.run:1, field 'score': score is NaN"),
])
def test_read_run_errors(tmp_path, content, match):
    path = tmp_path / "r.run"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=match):
        read_run(path)


# ------------------------------------------------------------------ data sets

def test_load_beir():
    data = load_beir(FIXTURES / "beir")
    assert isinstance(data, LabelledSet)
    assert data.name == "beir-test"
    assert data.queries == {"1": "wireless mouse", "2": "无线鼠标"}  # only judged in test
    assert data.qrels == {"1": {"d1": 1}, "2": {"d2": 2, "d1": 1}}
    assert data.products[0] == {"id": "d1", "title": "Logitech M185 Wireless Mouse",
                                "description": "Compact wireless mouse with USB receiver"}
    # No title: the text becomes the title.
    assert data.products[1] == {"id": "d2", "title": "罗技 无线鼠标 办公 静音"}
    assert load_beir(FIXTURES / "beir", split="dev").queries == {"3": "usb c cable"}
    with pytest.raises(DataError, match=r"qrels.*train\.tsv.*not found"):
        load_beir(FIXTURES / "beir", split="train")


def _write_esci(folder: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    examples = pa.table({
        "example_id": [0, 1, 2, 3, 4, 5, 6],
        "query": ["iphone case", "iphone case", "iphone case", "usb cable", "usb cable",
                  "funda iphone", "iphone case"],
        "query_id": [10, 10, 10, 11, 11, 12, 10],
        "product_id": ["B01", "B02", "B03", "B04", "B01", "B05", "B06"],
        "product_locale": ["us", "us", "us", "us", "us", "es", "us"],
        "esci_label": ["E", "S", "I", "C", "I", "E", "E"],
        "small_version": [1, 1, 0, 1, 1, 1, 0],
        "large_version": [1] * 7,
        "split": ["test", "test", "test", "test", "test", "test", "train"],
    })
    products = pa.table({
        "product_id": ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B01"],
        "product_title": ["Clear iPhone 13 Case", "iPhone 13 Silicone Case", "Phone Stand",
                          "USB-C Cable 2m", "Funda iPhone", "Leather iPhone Case",
                          "Unjudged Lamp", "Funda transparente"],
        "product_description": ["Slim clear case", None, "", "Fast charging", None, None,
                                "Desk lamp", "Funda"],
        "product_bullet_point": [None, "Soft touch\nDrop tested", None, None, None, None, None,
                                 None],
        "product_brand": ["Spigen", "Apple", None, "Anker", None, None, "IKEA", None],
        "product_color": ["Clear", None, "Black", None, None, None, None, None],
        "product_locale": ["us", "us", "us", "us", "es", "us", "us", "es"],
    })
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
    assert by_id["B01"] == {"id": "B01", "title": "Clear iPhone 13 Case",
                            "description": "Slim clear case", "brand": "Spigen",
                            "attributes": {"color": "Clear"}}
    assert by_id["B02"]["description"] == "Soft touch\nDrop tested"  # bullet points fallback
    assert by_id["B03"] == {"id": "B03", "title": "Phone Stand", "attributes": {"color": "Black"}}


def test_load_esci_options(esci_folder):
    small = load_esci(esci_folder, small=True)
    assert small.qrels == {"10": {"B01": 3, "B02": 2}, "11": {"B04": 1, "B01": 0}}
    judged = load_esci([esci_folder / ESCI_EXAMPLES, esci_folder / ESCI_PRODUCTS],
                       corpus="judged")
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
    with pytest.raises(DataError, match=r"field 'product_id': missing column\(s\) product_id, "
                                        r"esci_label"):
        load_esci(tmp_path)


def test_load_wands_tab_separated_with_quotes():
    data = load_wands(FIXTURES / "wands")
    assert data.name == "wands"
    assert data.queries == {"0": "salon chair", "1": 'fawkes 36" vanity'}  # judged only
    assert data.qrels == {"0": {"2": 2, "0": 0}, "1": {"1": 2, "0": 1}}
    assert data.products[0] == {"id": "0", "title": "solid wood platform bed",
                                "description": "good, deep sleep", "category": "Beds"}
    assert data.products[1] == {"id": "1", "title": 'fawkes 36" blue vanity',
                                "category": "Vanities"}


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
    assert dev.products == [{"id": "1", "title": "无线鼠标 静音 办公"},
                            {"id": "2", "title": "机械键盘 青轴"},
                            {"id": "3", "title": "蓝牙耳机 降噪"}]
    train = load_multicpr(FIXTURES / "multicpr", split="train")
    assert train.queries == {"200": "降噪耳机"} and train.qrels == {"200": {"3": 1}}


def test_load_homedepot_layout():
    data = load_homedepot(FIXTURES / "homedepot")
    assert data.name == "homedepot-dev"
    assert data.queries == {"hd1": "shower only faucet", "hd2": "deck paint"}
    assert data.qrels == {"hd1": {"100005": 2, "100001": 0}, "hd2": {"100002": 1}}
    assert data.products[1] == {"id": "100002", "title": "BEHR Premium Textured DeckOver "
                                "1-gal. Tugboat Wood Coating", "brand": "BEHR"}
    assert data.summary()["judgements"] == 3


def test_load_dataset_detects_layouts(esci_folder):
    assert detect_format(FIXTURES / "beir") == "beir"
    assert detect_format(FIXTURES / "wands") == "wands"
    assert detect_format(FIXTURES / "multicpr") == "multicpr"
    assert detect_format(FIXTURES / "homedepot") == "shopsearch"
    assert detect_format(esci_folder) == "esci"
    assert load_dataset(FIXTURES / "beir").name == "beir-test"
    assert load_dataset(FIXTURES / "multicpr", "train").name == "multicpr-multicpr-train"
    assert load_dataset(FIXTURES / "homedepot").queries == load_homedepot(
        FIXTURES / "homedepot").queries
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

    pq.write_table(pa.table({"query_id": [1], "query": ["x"], "product_id": ["a"],
                             "esci_label": ["X"], "split": ["test"], "product_locale": ["us"]}),
                   tmp_path / ESCI_EXAMPLES)
    pq.write_table(pa.table({"product_id": ["a"], "product_locale": ["us"],
                             "product_title": ["A"]}), tmp_path / ESCI_PRODUCTS)
    with pytest.raises(DataError, match=r"field 'esci_label': unknown esci_label 'X' for query "
                                        r"'1', product 'a'"):
        load_esci(tmp_path)
