"""End to end with the real small models (no fakes): build an index of the bilingual fixture
catalogue through the CLI and search it. Offline; the e5-small rebuild goes to a temp cache."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from shopsearch.cli.main import cli


@pytest.fixture(scope="module")
def e5_index(tmp_path_factory, catalog_path):
    target = tmp_path_factory.mktemp("e5") / "idx"
    result = CliRunner().invoke(
        cli,
        [
            "build-index",
            "--catalog",
            str(catalog_path),
            "--index",
            str(target),
            "--model",
            "e5-small",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    return target


def test_e5_dense_stage_alone_ranks_summer_dresses_first(e5_index):
    from shopsearch.engine import SearchEngine

    engine = SearchEngine.open(e5_index)
    assert engine.index.manifest.encoder["name"] == "e5-small"
    dense = [h.product_id for h in engine.stage("dense").search(["夏季连衣裙"], 12)[0]]
    assert dense[:2] == ["p01", "p03"]  # the two Chinese dresses, summer first
    english = [h.product_id for h in engine.stage("dense").search(["summer dress"], 12)[0]]
    assert english[0] == "p02"
    # Zero-shot e5 prefers same-language products, yet still reaches across languages to the
    # Chinese summer dress (whose title shares no word with the query).
    assert "p01" in english[:4]
    beds = [h.product_id for h in engine.stage("dense").search(["king poster bed"], 2)[0]]
    assert beds[0] == "p05"


def test_e5_query_cli_json(e5_index):
    result = CliRunner().invoke(
        cli, ["query", "夏季连衣裙", "--index", str(e5_index), "--json", "--explain", "-k", "3"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["results"][0]["id"] == "p01"
    assert {"encode_query", "dense_search", "bm25", "total"} <= set(data["timings_ms"])
    assert 0 < data["results"][0]["dense"] <= 1


def test_minilm_english_index_and_long_query(tmp_path, catalog_path):
    target = tmp_path / "idx"
    result = CliRunner().invoke(
        cli,
        [
            "build-index",
            "--catalog",
            str(catalog_path),
            "--index",
            str(target),
            "--model",
            "minilm",
        ],
    )
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(
        cli, ["query", "cordless drill " * 2000, "--index", str(target), "--json", "-k", "1"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"][0]["id"] == "p10"
