"""The acceptance test of "one pipeline": for every stage, the top 10 of `benchmark`'s run file
equals what `query --json --stage` serves, product by product and score by score, on an index
with min-max convex fusion (whose normalisation depends on how deep the fused lists are) and a
blended reranker. Real models through the CLI, as a user runs them: MiniLM as bi-encoder and a
MiniLM cross-encoder with a seeded, untrained head (its scores are arbitrary but fixed, which
is all the equality needs)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from shopsearch.cli.main import cli

QUERIES = {"q1": "夏季连衣裙", "q2": "king poster bed", "q3": "cotton duvet king"}
QRELS = {"q1": {"p01": 2, "p02": 2}, "q2": {"p05": 2, "p06": 1}, "q3": {"p08": 2}}


@pytest.fixture(scope="module")
def tuned_index(tmp_path_factory, catalog_path):
    import torch

    from shopsearch.benchmarks.tuning import BlendTuningResult, store_blend
    from shopsearch.index.store import install_reranker, update_manifest
    from shopsearch.models.registry import load_cross_encoder
    from shopsearch.rerank.blend import BlendConfig
    from shopsearch.retrieval.fusion import FusionConfig

    root = tmp_path_factory.mktemp("one-pipeline")
    index = root / "idx"
    result = CliRunner().invoke(
        cli,
        [
            "build-index",
            "--catalog",
            str(catalog_path),
            "--index",
            str(index),
            "--model",
            "minilm",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    torch.manual_seed(0)
    load_cross_encoder("minilm", max_length=32).save(str(root / "ce"))
    install_reranker(index, root / "ce")
    store_blend(index, BlendTuningResult("nDCG@10", BlendConfig(weight=0.5, top=4), 0, 0), 3)
    # Depth 5 of 12 products: the fused lists are shallower than the run's depth of 1000.
    update_manifest(
        index,
        candidate_depth=5,
        fusion=FusionConfig(method="convex", alpha=0.5, normalization="minmax").to_dict(),
    )
    (root / "q.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in QUERIES.items()), "utf-8")
    (root / "qrels.txt").write_text(
        "".join(f"{q} 0 {p} {g}\n" for q, docs in QRELS.items() for p, g in docs.items())
    )
    out = root / "report"
    result = CliRunner().invoke(
        cli,
        [
            "benchmark",
            "--index",
            str(index),
            "--queries",
            str(root / "q.tsv"),
            "--qrels",
            str(root / "qrels.txt"),
            "--stages",
            "bm25,dense,hybrid,rerank",
            "--depth",
            "1000",
            "--latency-queries",
            "0",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    return index, out


def run_top10(path, qid):
    rows = [line.split() for line in path.read_text().splitlines()]
    return [(doc, float(score)) for q, _, doc, _, score, _ in rows if q == qid][:10]


@pytest.mark.parametrize("stage", ["bm25", "dense", "hybrid", "rerank"])
def test_benchmark_run_top10_equals_query_json(tuned_index, stage):
    index, out = tuned_index
    for qid, text in QUERIES.items():
        result = CliRunner().invoke(
            cli, ["query", text, "--index", str(index), "--json", "--stage", stage, "-k", "10"]
        )
        assert result.exit_code == 0, result.output
        served = [(r["id"], r["score"]) for r in json.loads(result.stdout)["results"]]
        assert served == run_top10(out / f"{stage}.run", qid), (stage, text)
        if stage == "rerank":
            assert all("click_probability" in r for r in json.loads(result.stdout)["results"][:4])


def test_the_default_query_is_the_rerank_stage(tuned_index):
    index, out = tuned_index
    result = CliRunner().invoke(cli, ["query", QUERIES["q2"], "--index", str(index), "--json"])
    data = json.loads(result.stdout)
    assert data["stage"] == "rerank" and data["reranked"]
    assert [(r["id"], r["score"]) for r in data["results"]] == run_top10(out / "rerank.run", "q2")
