"""`search-cli update`, `update --delete`, `compact` and `check` on a fake-encoder index."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from shopsearch.cli.main import cli


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def index(tmp_path, catalog_path, keyword_encoder):
    from shopsearch.index.catalog import read_catalog
    from shopsearch.index.store import build_index

    build_index(read_catalog(catalog_path), tmp_path / "idx", encoder=keyword_encoder)
    return tmp_path / "idx"


def _query(runner, index, text, *extra):
    result = runner.invoke(cli, ["query", text, "--index", str(index), "--json", *extra])
    assert result.exit_code == 0, result.output
    return [h["id"] for h in json.loads(result.stdout)["results"]]


def test_update_delete_compact_check(runner, index, tmp_path, keyword_models):
    changes = tmp_path / "changes.jsonl"
    changes.write_text(
        '{"id": "p05", "title": "Zebrawood King Canopy Bed", "price": 99}\n'
        '{"id": "n01", "title": "Striped zebra duvet", "price": 35}\n',
        encoding="utf-8",
    )
    result = runner.invoke(cli, ["update", "--index", str(index), "--catalog", str(changes)])
    assert result.exit_code == 0, result.output
    assert "1 added, 1 replaced (2 re-encoded), 0 unchanged, 0 deleted" in result.stdout
    assert "13 products in 2 segment(s), generation 2" in result.stdout
    assert _query(runner, index, "zebrawood canopy", "--stage", "bm25")[0] == "p05"
    assert "p05" in _query(runner, index, "bed", "--max-price", "100", "--stage", "bm25")

    ids = tmp_path / "gone.txt"
    ids.write_text("p08\nn01\nno-such-id\n")
    result = runner.invoke(
        cli, ["update", "--index", str(index), "--delete", str(ids), "--no-compact", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["deleted"], summary["not_found"], summary["generation"]) == (2, 1, 3)
    assert summary["ids"]["not_found"] == ["no-such-id"] and summary["compaction"] is None
    for stage in ("bm25", "dense", "hybrid"):
        hits = _query(runner, index, "king duvet cover zebra", "-k", "20", "--stage", stage)
        assert not {"p08", "n01"} & set(hits), stage

    result = runner.invoke(cli, ["check", "--index", str(index)])
    assert result.exit_code == 0 and result.stdout.startswith("ok: 11 products in 2 segment(s)")
    result = runner.invoke(cli, ["compact", "--index", str(index)])
    assert result.exit_code == 0, result.output
    assert "compacted 2 segments into 1 (3 deleted rows dropped)" in result.stdout
    result = runner.invoke(cli, ["compact", "--index", str(index)])
    assert "already compact" in result.stdout
    result = runner.invoke(cli, ["check", "--index", str(index), "--json"])
    report = json.loads(result.stdout)
    assert report["ok"] and (report["products"], report["segments"]) == (11, 1)


def test_check_lists_what_is_wrong_and_exits_2(runner, index):
    segment = next((index / "segments").iterdir())
    (segment / "bm25_tf.npy").write_bytes(b"garbage")
    (segment / "ids.json").unlink()
    result = runner.invoke(cli, ["check", "--index", str(index)])
    assert result.exit_code == 2
    lines = result.stdout.strip().splitlines()
    assert any("bm25_tf.npy: 7 bytes" in line for line in lines)
    assert any("ids.json: missing" in line for line in lines)
    result = runner.invoke(cli, ["query", "bed", "--index", str(index), "--stage", "bm25"])
    assert result.exit_code == 2 and "is damaged" in result.stderr


def test_update_errors_are_one_line(runner, index, tmp_path, keyword_models):
    from shopsearch.index.lock import writer_lock

    result = runner.invoke(cli, ["update", "--index", str(index)])
    assert result.exit_code == 2 and "nothing to do" in result.stderr
    ids = tmp_path / "ids.txt"
    ids.write_text("p01\n")
    with writer_lock(index, "compact"):
        result = runner.invoke(cli, ["update", "--index", str(index), "--delete", str(ids)])
    assert result.exit_code == 2 and "is being changed by pid" in result.stderr
    assert "(compact, since" in result.stderr and "Traceback" not in result.output
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    result = runner.invoke(cli, ["update", "--index", str(index), "--delete", str(empty)])
    assert result.exit_code == 2 and "no product ids" in result.stderr


def test_a_wave_one_index_is_refused_with_the_rebuild_command(runner, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "manifest.json").write_text(
        json.dumps({"format": "shopsearch-index", "format_version": 1})
    )
    for args in (["query", "bed"], ["update", "--delete", str(tmp_path / "x")], ["compact"]):
        (tmp_path / "x").write_text("p01\n")
        result = runner.invoke(cli, [*args, "--index", str(old)])
        assert result.exit_code == 2, args
        assert "format version 1" in result.stderr and "search-cli build-index" in result.stderr
    result = runner.invoke(cli, ["check", "--index", str(old)])
    assert result.exit_code == 2 and "format version 1" in result.stdout
