import json

import pytest
from click.testing import CliRunner

from shopsearch.cli.main import cli
from shopsearch.index.manifest import Manifest


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def bm25_index(runner, tmp_path, catalog_path):
    target = tmp_path / "idx"
    result = runner.invoke(
        cli,
        [
            "build-index",
            "--catalog",
            str(catalog_path),
            "--index",
            str(target),
            "--no-dense",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["products"] == 12 and summary["bytes_on_disk"] > 0
    return target


def test_query_table_and_json(runner, bm25_index):
    result = runner.invoke(cli, ["query", "夏季连衣裙", "--index", str(bm25_index), "-k", "2"])
    assert result.exit_code == 0, result.output
    first_row = result.stdout.splitlines()[2]
    assert "p01" in first_row and "夏季碎花雪纺连衣裙" in first_row
    assert "not reranked" in result.stderr
    result = runner.invoke(
        cli, ["query", "king poster bed", "--index", str(bm25_index), "--json", "--explain"]
    )
    data = json.loads(result.stdout)
    assert data["results"][0]["id"] == "p05"
    assert data["results"][0]["matched_terms"] == ["bed", "king", "poster"]
    assert "bm25" in data["timings_ms"]


def test_query_filters(runner, bm25_index):
    result = runner.invoke(
        cli,
        [
            "query",
            "bed",
            "--index",
            str(bm25_index),
            "--json",
            "--category",
            "Beds",
            "--max-price",
            "1000",
        ],
    )
    assert [r["id"] for r in json.loads(result.stdout)["results"]] == ["p06"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["query", "  "], "the query is empty"),
        (["query", "bed", "--index", "{tmp}/missing"], "does not exist"),
        (["query", "bed", "--index", "{tmp}", "--min-price", "5", "--max-price", "1"], "above"),
    ],
)
def test_query_errors_are_one_line(runner, tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = runner.invoke(cli, args)
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_foreign_index_folder_is_refused(runner, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    result = runner.invoke(cli, ["query", "bed", "--index", str(tmp_path)])
    assert result.exit_code == 2 and "not a shopsearch index" in result.stderr


def test_bad_catalogue_never_damages_the_existing_index(runner, bm25_index, tmp_path):
    before = (bm25_index / "manifest.json").read_bytes()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "title": "ok"}\n{"id": "2", "title": "x", "price": "abc"}\n')
    result = runner.invoke(
        cli, ["build-index", "--catalog", str(bad), "--index", str(bm25_index), "--no-dense"]
    )
    assert result.exit_code == 2
    assert f"{bad}:2, field 'price'" in result.stderr
    assert (bm25_index / "manifest.json").read_bytes() == before


def test_help_teaches(runner):
    result = runner.invoke(cli, ["--help"])
    assert "search-cli build-index" in result.output and "夏季连衣裙" in result.output
    result = runner.invoke(cli, ["query", "--help"])
    assert "--explain" in result.output and "Examples" in result.output


def test_benchmark_and_tune_fusion_smoke(
    runner, tmp_path, catalog_path, keyword_encoder, keyword_models
):
    from shopsearch.index.catalog import read_catalog
    from shopsearch.index.store import build_index

    queries = tmp_path / "q.tsv"
    queries.write_text("q1\t夏季连衣裙\nq2\tking poster bed\nq3\tno match here\n", encoding="utf-8")
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q1 0 p01 2\nq1 0 p02 2\nq1 0 p03 1\nq2 0 p05 2\nq2 0 p06 1\nq3 0 p10 0\n")
    index = tmp_path / "idx"
    runner.invoke(
        cli, ["build-index", "--catalog", str(catalog_path), "--index", str(index), "--no-dense"]
    )
    out = tmp_path / "report"
    result = runner.invoke(
        cli,
        [
            "benchmark",
            "--index",
            str(index),
            "--queries",
            str(queries),
            "--qrels",
            str(qrels),
            "--stages",
            "bm25,dense",
            "--depth",
            "10",
            "--latency-queries",
            "2",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "skipping stage dense" in result.stderr
    assert (out / "bm25.run").read_text().startswith("q1 Q0 p01 1 ")
    report = json.loads((out / "report.json").read_text())
    assert report["stages"][0]["name"] == "bm25"
    assert (out / "report.png").stat().st_size > 0 and (out / "report.md").exists()
    # tune-fusion needs a dense part: on a BM25-only index it says so in one line.
    result = runner.invoke(
        cli,
        ["tune-fusion", "--index", str(index), "--queries", str(queries), "--qrels", str(qrels)],
    )
    assert result.exit_code == 2 and "no dense part" in result.stderr
    # With a dense part, tuning writes the best setting, scored at the index's candidate
    # depth, into the manifest. On these queries BM25 misses the English summer dress that
    # dense finds, so the default RRF setting is not the best one.
    build_index(read_catalog(catalog_path), index, encoder=keyword_encoder)
    result = runner.invoke(
        cli,
        [
            "tune-fusion",
            "--index",
            str(index),
            "--queries",
            str(queries),
            "--qrels",
            str(qrels),
            "--json",
            "--depth",
            "8",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    manifest = json.loads((index / "manifest.json").read_text())
    assert summary["written"] and manifest["candidate_depth"] == 8
    assert {k: manifest["fusion"][k] for k in summary["best"]} == summary["best"]
    assert manifest["fusion"]["score"] == summary["best_score"]
    # The score stored is what the hybrid stage now serves at that depth.
    from shopsearch.benchmarks.metrics import evaluate, hits_to_run
    from shopsearch.benchmarks.trec import read_qrels, read_queries
    from shopsearch.engine import SearchEngine

    engine = SearchEngine.open(index)
    judged = {k: v for k, v in read_qrels(qrels).items() if k != "q3"}
    texts = read_queries(queries)
    served = dict(zip(judged, engine.stage("hybrid").search([texts[q] for q in judged], 8)))
    assert evaluate(judged, hits_to_run(served), ["nDCG@10"])[1]["nDCG@10"] == pytest.approx(
        summary["best_score"]
    )


def test_tune_rerank_writes_the_blend_beside_the_installed_reranker(runner, tmp_path, bm25_index):
    import torch

    from shopsearch.engine import SearchEngine
    from shopsearch.index.store import install_reranker
    from shopsearch.models.registry import load_cross_encoder

    torch.manual_seed(0)
    torch.set_num_threads(1)
    load_cross_encoder("minilm", max_length=32).save(str(tmp_path / "ce"))  # untrained head
    queries = tmp_path / "q.tsv"
    queries.write_text("q1\t夏季连衣裙\nq2\tking poster bed\n", encoding="utf-8")
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q1 0 p01 2\nq1 0 p02 2\nq2 0 p05 2\nq2 0 p06 1\n")
    args = [
        "tune-rerank",
        "--index",
        str(bm25_index),
        "--queries",
        str(queries),
        "--qrels",
        str(qrels),
        "--weights",
        "0,1",
        "--tops",
        "2,5",
    ]
    result = runner.invoke(cli, args)
    assert result.exit_code == 2 and "no installed reranker" in result.stderr
    install_reranker(bm25_index, tmp_path / "ce")
    result = runner.invoke(cli, args + ["--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["written"]
    blend = json.loads((bm25_index / "manifest.json").read_text())["reranker"]["blend"]
    assert blend["weight"] in (0.0, 1.0) and blend["top"] in (2, 5) and blend["queries"] == 2
    assert (blend["weight"], blend["top"]) == (summary["best"]["weight"], summary["best"]["top"])
    engine = SearchEngine.open(bm25_index)
    assert (engine.blend.weight, engine.blend.top) == (blend["weight"], blend["top"])
    # --held-out keeps only the queries the reranker's training held out.
    result = runner.invoke(cli, args + ["--held-out"])
    assert result.exit_code == 2 and "lists no held-out queries" in result.stderr
    installed = bm25_index / str(Manifest.read(bm25_index).reranker["path"])
    (installed / "training.json").write_text('{"held_out_queries": ["q2"]}')
    result = runner.invoke(cli, args + ["--held-out", "--json", "--dry-run"])
    assert result.exit_code == 0 and json.loads(result.stdout)["queries"] == 1
    # An explicit --reranker is not the tuned one: it ranks by click probability alone.
    assert SearchEngine.open(bm25_index, reranker=str(tmp_path / "ce")).blend.weight == 1.0
