import json

import pytest
from click.testing import CliRunner

from shopsearch.cli.main import cli


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def bm25_index(runner, tmp_path, catalog_path):
    target = tmp_path / "idx"
    result = runner.invoke(cli, ["build-index", "--catalog", str(catalog_path), "--index",
                                 str(target), "--no-dense", "--json"])
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
    result = runner.invoke(cli, ["query", "king poster bed", "--index", str(bm25_index),
                                 "--json", "--explain"])
    data = json.loads(result.stdout)
    assert data["results"][0]["id"] == "p05"
    assert data["results"][0]["matched_terms"] == ["bed", "king", "poster"]
    assert "bm25" in data["timings_ms"]


def test_query_filters(runner, bm25_index):
    result = runner.invoke(cli, ["query", "bed", "--index", str(bm25_index), "--json",
                                 "--category", "Beds", "--max-price", "1000"])
    assert [r["id"] for r in json.loads(result.stdout)["results"]] == ["p06"]


@pytest.mark.parametrize("args, message", [
    (["query", "  "], "the query is empty"),
    (["query", "bed", "--index", "{tmp}/missing"], "does not exist"),
    (["query", "bed", "--index", "{tmp}", "--min-price", "5", "--max-price", "1"], "above"),
])
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
    result = runner.invoke(cli, ["build-index", "--catalog", str(bad), "--index",
                                 str(bm25_index), "--no-dense"])
    assert result.exit_code == 2
    assert f"{bad}:2, field 'price'" in result.stderr
    assert (bm25_index / "manifest.json").read_bytes() == before


def test_help_teaches(runner):
    result = runner.invoke(cli, ["--help"])
    assert "search-cli build-index" in result.output and "夏季连衣裙" in result.output
    result = runner.invoke(cli, ["query", "--help"])
    assert "--explain" in result.output and "Examples" in result.output
