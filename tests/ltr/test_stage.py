"""The ltr stage in the engine, its installation in an index, training on judgements and on
clicks, and the train-ltr CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from shopsearch.cli.main import cli
from shopsearch.engine import SearchEngine
from shopsearch.errors import SearchError
from shopsearch.index.store import install_ltr, load_index
from shopsearch.ltr.features import FEATURES, Featurizer
from shopsearch.ltr.model import LTRModel, LTRParams
from shopsearch.ltr.train import click_groups, train_ltr_from_clicks, train_ltr_from_qrels
from shopsearch.retrieval.types import sort_hits
from shopsearch.training.clicks import Impression

QUERIES = {
    "q1": "夏季连衣裙",
    "q2": "summer dress",
    "q3": "king bed",
    "q4": "wood bed",
    "q5": "cordless drill",
    "q6": "dog bed",
    "q7": "床",
    "q8": "cotton king",
}
QRELS = {
    "q1": {"p01": 2, "p02": 1},
    "q2": {"p02": 2, "p01": 1},
    "q3": {"p05": 2, "p06": 1},
    "q4": {"p05": 2, "p07": 2, "p06": 1},
    "q5": {"p10": 2},
    "q6": {"p12": 2},
    "q7": {"p07": 2, "p05": 1, "p06": 1},
    "q8": {"p08": 2},
}
PARAMS = LTRParams(rounds=30, min_data_in_leaf=1, num_leaves=4, num_threads=1)


@pytest.fixture
def trained(engine):
    stage = engine.ltr_stage(None)
    return train_ltr_from_qrels(
        stage, engine.ltr_first_stage, QUERIES, QRELS, params=PARAMS, valid_fraction=0.0
    )


def test_the_stage_ranks_by_the_models_predictions(engine, trained):
    ltr = engine.ltr_stage(trained.model)
    queries = list(QUERIES.values())
    served = ltr.search(queries, k=5)
    for query, hits in zip(queries, served):
        candidates = engine.stage("hybrid").search([query], ltr.top)[0]
        featurizer = Featurizer(engine.product, engine.index.analyzer.tokenize)
        scores = trained.model.predict(featurizer.matrix(query, engine.analyse(query), candidates))
        expected = sort_hits(
            [type(h)(h.product_id, float(s), h.scores) for h, s in zip(candidates, scores)]
        )[:5]
        assert [h.product_id for h in hits] == [h.product_id for h in expected]
        assert [h.score for h in hits] == [h.scores["ltr"] for h in hits]
        assert all("fused" in h.scores for h in hits)  # earlier stages' scores are kept
    # k does not change the ranking: a page is the head of the benchmark's run
    deep = ltr.search(queries, k=1000)
    assert [[h.product_id for h in d[:5]] for d in deep] == [
        [h.product_id for h in s] for s in served
    ]


def test_learns_the_judged_order_on_its_training_queries(engine, trained):
    ltr = engine.ltr_stage(trained.model)
    for qid, query in QUERIES.items():
        top = ltr.search([query], k=1)[0][0].product_id
        assert QRELS[qid].get(top, 0) == max(QRELS[qid].values()), (query, top)


def test_installed_model_is_the_final_stage(built_index, trained, keyword_encoder, tmp_path):
    trained.model.save(tmp_path / "m")
    manifest = install_ltr(built_index, tmp_path / "m", trained.record())
    assert manifest.ltr["path"].startswith("ltr-") and manifest.ltr["first_stage"] == "hybrid"
    assert list(manifest.ltr["importances"]) == list(FEATURES)
    index = load_index(built_index)
    assert index.ltr_path == built_index / manifest.ltr["path"]
    engine = SearchEngine(
        index, encoder=keyword_encoder, depth=20, ltr=LTRModel.load(index.ltr_path)
    )
    assert engine.final_stage == "ltr"
    result = engine.search("king bed", k=3)
    assert result.stage == "ltr" and result.hits[0].product_id == "p05"
    assert "ltr" in result.to_dict()["results"][0]
    # a second install replaces the first, whose folder stays for readers of the previous
    # generation and is collected by the publish after that
    second = install_ltr(built_index, tmp_path / "m", trained.record())
    assert second.ltr["path"] != manifest.ltr["path"]
    assert (built_index / manifest.ltr["path"]).is_dir()
    install_ltr(built_index, tmp_path / "m", trained.record())
    assert not (built_index / manifest.ltr["path"]).exists()
    assert (built_index / second.ltr["path"]).is_dir()


def test_stage_errors_say_what_to_do(engine, trained, built_index):
    with pytest.raises(SearchError, match="train one with `search-cli train-ltr`"):
        engine.stage("ltr")
    over_rerank = LTRModel(trained.model.booster, FEATURES, {"first_stage": "rerank"})
    refused = SearchEngine(load_index(built_index), ltr=over_rerank)
    with pytest.raises(SearchError, match="trained over the rerank stage.*load the reranker"):
        refused.stage("ltr")
    assert refused.final_stage == "hybrid"


def test_click_training_with_each_correction(engine):
    stage = engine.ltr_stage(None)
    log = []
    for qid, query in QUERIES.items():
        shown = [h.product_id for h in stage.candidates([query])[0][:4]]
        for session in range(6):
            for position, pid in enumerate(shown, start=1):
                relevant = QRELS[qid].get(pid, 0) > 0
                clicked = relevant and (session + position) % position == 0
                log.append(Impression(query, pid, position, clicked, session_id=f"{qid}-{session}"))
    log.append(Impression("king bed", "not-in-the-index", 1, True, session_id="x"))
    theta = np.array([1.0, 0.5, 0.33, 0.25])
    for correction in ("position", "ipw", "none"):
        result = train_ltr_from_clicks(
            stage,
            "hybrid",
            log,
            correction=correction,
            propensities=theta,
            params=PARAMS,
            valid_fraction=0.0,
        )
        assert result.model.info["correction"] == correction
        assert result.model.predict(np.zeros((1, len(FEATURES)))).shape == (1,)
    sessions = click_groups(stage, log[:4], "position")
    assert [list(g.positions) for g in sessions] == [[1, 2, 3, 4]]
    graded = click_groups(stage, log[:24], "ipw", theta)  # one query, 6 sessions
    assert len(graded) == 1 and graded[0].labels.max() <= 4


@pytest.fixture
def data_files(tmp_path):
    queries = tmp_path / "queries.tsv"
    queries.write_text("".join(f"{q}\t{t}\n" for q, t in QUERIES.items()), encoding="utf-8")
    qrels = tmp_path / "qrels.txt"
    qrels.write_text(
        "".join(f"{q} 0 {p} {g}\n" for q, judged in QRELS.items() for p, g in judged.items())
    )
    return queries, qrels


def test_cli_train_install_query_and_benchmark(tmp_path, catalog_path, data_files):
    runner = CliRunner()
    index = tmp_path / "idx"
    built = runner.invoke(
        cli, ["build-index", "--catalog", str(catalog_path), "--index", str(index), "--no-dense"]
    )
    assert built.exit_code == 0, built.output
    queries, qrels = data_files
    common = ["--index", str(index), "--queries", str(queries), "--qrels", str(qrels)]
    result = runner.invoke(
        cli,
        [
            "train-ltr",
            *common,
            "--min-data-in-leaf",
            "1",
            "--num-leaves",
            "4",
            "--rounds",
            "20",
            "--valid-fraction",
            "0",
            "--out",
            str(tmp_path / "model"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["installed"] and report["first_stage"] == "hybrid"
    assert set(report["importances"]) == set(FEATURES)
    assert (tmp_path / "model" / "model.txt").read_text().startswith("tree")
    table = runner.invoke(
        cli,
        [
            "train-ltr",
            *common,
            "--min-data-in-leaf",
            "1",
            "--rounds",
            "5",
            "--valid-fraction",
            "0",
            "--out",
            str(tmp_path / "model2"),
            "--no-install",
        ],
    )
    assert table.exit_code == 0 and "feature" in table.stdout and "share" in table.stdout
    query = runner.invoke(cli, ["query", "king bed", "--index", str(index), "--json"])
    assert query.exit_code == 0, query.output
    assert json.loads(query.stdout)["stage"] == "ltr"
    bench = runner.invoke(
        cli,
        [
            "benchmark",
            *common,
            "--stages",
            "hybrid,ltr",
            "--out",
            str(tmp_path / "rep"),
            "--latency-queries",
            "2",
            "--json",
        ],
    )
    assert bench.exit_code == 0, bench.output
    stages = {s["name"]: s for s in json.loads(bench.stdout)["stages"]}
    assert set(stages) == {"hybrid", "ltr"}
    run = (tmp_path / "rep" / "ltr.run").read_text().splitlines()
    served = json.loads(query.stdout)["results"]
    king = [line.split() for line in run if line.startswith("q3 ")]
    assert [r[2] for r in king[: len(served)]] == [r["id"] for r in served]


def test_cli_bad_input_names_file_line_and_field(tmp_path, catalog_path, data_files):
    runner = CliRunner()
    index = tmp_path / "idx"
    runner.invoke(
        cli, ["build-index", "--catalog", str(catalog_path), "--index", str(index), "--no-dense"]
    )
    queries, _ = data_files
    bad_qrels = tmp_path / "bad.qrels"
    bad_qrels.write_text("q1 0 p01 2\nq2 0 p02\n")
    result = runner.invoke(
        cli,
        ["train-ltr", "--index", str(index), "--queries", str(queries), "--qrels", str(bad_qrels)],
    )
    assert result.exit_code == 2
    assert "bad.qrels:2: expected 4 columns" in result.output
    clicks = tmp_path / "clicks.jsonl"
    clicks.write_text(
        '{"query": "king bed", "product_id": "p05", "position": 1, "clicked": 1}\n'
        '{"query": "king bed", "product_id": "p06", "position": "second", "clicked": 0}\n'
    )
    result = runner.invoke(cli, ["train-ltr", "--index", str(index), "--clicks", str(clicks)])
    assert result.exit_code == 2
    assert "clicks.jsonl:2, field 'position'" in result.output
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text('{"query": "king bed", "product_id": "zz", "position": 1, "clicked": 1}\n')
    result = runner.invoke(cli, ["train-ltr", "--index", str(index), "--clicks", str(unknown)])
    assert result.exit_code == 2 and "none of the click log's products" in result.output
    result = runner.invoke(cli, ["query", "king bed", "--index", str(index), "--stage", "ltr"])
    assert result.exit_code == 2 and "train-ltr" in result.output


class LengthReranker:
    """Prefers shorter product texts: logit = -len / 10, probability its sigmoid."""

    name = "length"
    calibrated = True
    max_length = 32

    def logits(self, query, texts):
        return np.array([-len(t) / 10.0 for t in texts])

    def probabilities(self, logits):
        return 1.0 / (1.0 + np.exp(-np.asarray(logits)))


def test_over_a_reranker_the_click_probability_stays_the_calibrated_one(
    built_index, keyword_encoder
):
    from shopsearch.rerank.blend import BlendConfig

    index = load_index(built_index)
    reranked = SearchEngine(
        index,
        encoder=keyword_encoder,
        reranker=LengthReranker(),
        depth=20,
        blend=BlendConfig(top=5),
    )
    assert reranked.ltr_first_stage == "rerank"
    stage = reranked.ltr_stage(None)
    result = train_ltr_from_qrels(
        stage, "rerank", QUERIES, QRELS, params=PARAMS, valid_fraction=0.0
    )
    assert result.record()["first_stage"] == "rerank"
    engine = SearchEngine(
        index,
        encoder=keyword_encoder,
        reranker=LengthReranker(),
        depth=20,
        blend=BlendConfig(top=5),
        ltr=result.model,
    )
    served = engine.search("king bed", k=8)
    assert served.stage == "ltr" and served.reranked and served.calibrated
    rerank = {h.product_id: h for h in engine.search("king bed", k=50, stage="rerank").hits}
    for hit in served.hits:  # the probability shown is the reranker's, for the reranked head
        assert hit.scores.get("click_probability") == rerank[hit.product_id].scores.get(
            "click_probability"
        )
    col = FEATURES.index("click_missing")
    matrix = stage.features("king bed", stage.candidates(["king bed"])[0])
    assert list(matrix[:5, col]) == [0.0] * 5 and set(matrix[5:, col]) <= {1.0}
