"""A tiny real training run through the CLI: simulate clicks, train the reranker from them
(EM propensities, IPW, calibration, install) and from judgements, on the fixture catalogue."""

import json

import pytest
from click.testing import CliRunner

from shopsearch.cli.main import cli

QUERIES = {
    "q1": "夏季连衣裙",
    "q2": "king poster bed",
    "q3": "连衣裙",
    "q4": "bed",
    "q5": "dog bed",
    "q6": "实木床",
    "q7": "summer dress",
    "q8": "不粘锅",
}
QRELS = {
    "q1": {"p01": 2, "p02": 1, "p03": 1},
    "q2": {"p05": 2, "p07": 1, "p06": 1},
    "q3": {"p01": 2, "p03": 2, "p02": 1},
    "q4": {"p05": 2, "p06": 2, "p07": 2, "p12": 1},
    "q5": {"p12": 2},
    "q6": {"p07": 2, "p05": 1},
    "q7": {"p02": 2, "p01": 2},
    "q8": {"p11": 2},
}


@pytest.fixture
def labelled(tmp_path):
    queries = tmp_path / "queries.tsv"
    queries.write_text("".join(f"{q}\t{t}\n" for q, t in QUERIES.items()), encoding="utf-8")
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("".join(f"{q} 0 {p} {g}\n" for q, d in QRELS.items() for p, g in d.items()))
    return ["--queries", str(queries), "--qrels", str(qrels)]


def _ok(result):
    assert result.exit_code == 0, result.output
    return result


def test_clicks_and_judgements_to_an_installed_calibrated_reranker(
    tmp_path, labelled, catalog_path
):
    import torch

    torch.set_num_threads(1)
    runner = CliRunner()
    index, clicks = tmp_path / "idx", tmp_path / "clicks.jsonl"
    _ok(
        runner.invoke(
            cli,
            ["build-index", "--catalog", str(catalog_path), "--index", str(index), "--no-dense"],
        )
    )
    _ok(
        runner.invoke(
            cli,
            [
                "simulate-clicks",
                "--index",
                str(index),
                *labelled,
                "--stage",
                "bm25",
                "--sessions-per-query",
                "10",
                "--depth",
                "4",
                "--out",
                str(clicks),
            ],
        )
    )
    log = [json.loads(line) for line in clicks.read_text(encoding="utf-8").splitlines()]
    assert {row["query"] for row in log} == set(QUERIES.values())
    assert max(row["position"] for row in log) == 4 and any(row["clicked"] for row in log)
    small = ["--base-model", "minilm", "--epochs", "1", "--batch-size", "8", "--max-length", "32"]
    result = _ok(
        runner.invoke(
            cli,
            [
                "train-reranker",
                "--index",
                str(index),
                "--clicks",
                str(clicks),
                "--out",
                str(tmp_path / "from-clicks"),
                *small,
                "--json",
            ],
        )
    )
    report = json.loads(result.stdout)
    assert len(report["propensities"]) == 4 and report["propensities"][0] == pytest.approx(1.0)
    assert report["calibration"]["test_pairs"] > 0
    from shopsearch.index.store import load_index

    installed = load_index(index).reranker_path
    info = json.loads((installed / "training.json").read_text(encoding="utf-8"))
    assert info["trained_on"] == "click log" and info["held_out_queries"]
    assert (installed / "calibration.json").is_file()
    result = _ok(runner.invoke(cli, ["query", "bed", "--index", str(index), "--json"]))
    data = json.loads(result.stdout)
    assert data["reranked"] and 0 < data["results"][0]["click_probability"] < 1
    # From judgements, on a BM25-only index: negatives come from BM25 (no hybrid ranking).
    result = _ok(
        runner.invoke(
            cli,
            [
                "train-reranker",
                "--index",
                str(index),
                *labelled,
                "--out",
                str(tmp_path / "from-qrels"),
                *small,
                "--negatives-per-query",
                "3",
                "--no-install",
                "--json",
            ],
        )
    )
    assert json.loads(result.stdout)["train_pairs"] > 0
    info = json.loads((tmp_path / "from-qrels" / "training.json").read_text(encoding="utf-8"))
    assert info["trained_on"] == "graded judgements"
