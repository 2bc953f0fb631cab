"""benchmarks/online_loop.py end to end: a real ``search-cli serve`` subprocess, simulated
shoppers over HTTP, the server's own click log, a MiniLM reranker trained on it, installed,
reloaded and served. Small (BM25 only, 12 queries x 3 sessions, 1 epoch), so it stays in the
default run."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from shopsearch.benchmarks import online_loop
from shopsearch.training.simulate import true_propensities


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> online_loop.LoopResult:
    config = online_loop.LoopConfig(
        workdir=tmp_path_factory.mktemp("online-loop"),
        dense=False,
        reranker_base="minilm",
        train_queries=12,
        sessions_per_query=3,
        judged_queries=8,
        epochs=1,
    )
    return online_loop.run_loop(config)


def test_the_server_log_has_every_session_and_every_click(loop: online_loop.LoopResult) -> None:
    log = online_loop.read_server_log(loop.feedback_dir)
    by_session = defaultdict(list)
    for imp in log:
        by_session[imp.session_id].append(imp)
    for traffic in loop.traffic:
        assert len(traffic.sessions) == 12 * 3
        for session in traffic.sessions:
            rows = by_session[session.session_id]
            assert [r.position for r in rows] == list(range(1, 11))
            assert [r.product_id for r in rows] == session.shown
            assert {r.query for r in rows} == {rows[0].query}
            clicked = [r.product_id for r in rows if r.clicked]
            assert sorted(clicked) == sorted(session.clicked)
            assert sorted(r.product_id for r in rows if r.purchased) == sorted(session.purchased)
            # /events answered with the position the server had recorded for the product
            positions = {r.product_id: r.position for r in rows}
            assert session.click_positions == [positions[p] for p in session.clicked]
    shoppers = online_loop.shopper_impressions(log)
    judged = [i for i in log if (i.session_id or "").startswith(online_loop.JUDGED_TAG)]
    assert len(shoppers) == 2 * 12 * 3 * 10
    assert len(judged) == 2 * 8 * 10  # both rounds' judged requests, tagged apart
    assert len(log) == len(shoppers) + len(judged)
    posted = sum(len(s.clicked) for t in loop.traffic for s in t.sessions)
    assert sum(i.clicked for i in shoppers) == posted > 0
    assert loop.report["log"]["impressions"] == 12 * 3 * 10  # round 1 only was trained on
    assert loop.report["rounds"][0]["clicks_posted"] == loop.report["log"]["clicks"]


def test_a_reranker_was_trained_installed_and_reloaded(loop: online_loop.LoopResult) -> None:
    from shopsearch.index.manifest import Manifest

    report = loop.report
    manifest = Manifest.read(loop.index_dir)
    assert manifest.reranker is not None and "blend" in manifest.reranker
    installed = loop.index_dir / str(manifest.reranker["path"])
    assert (installed / "config.json").is_file()
    training = json.loads((installed / "training.json").read_text("utf-8"))
    assert training["trained_on"] == "click log" and training["position_weighting"]
    assert training["propensities"] == pytest.approx(true_propensities(10, 1.0).tolist())
    assert report["training"]["train_pairs"] > 0
    reload = report["reload"]
    assert reload["changed"] and reload["version_after"] == reload["ready_version"]
    assert "+" in reload["version_after"] and "+" not in reload["version_before"]
    before, after = report["rounds"]
    assert before["versions"] == [reload["version_before"]]
    assert after["versions"] == [reload["version_after"]]
    assert report["server_stop"]["graceful"]


def test_round_two_is_reranked_and_measured_by_client_and_server(
    loop: online_loop.LoopResult,
) -> None:
    before, after = loop.report["rounds"]
    assert before["results_with_click_probability"] == 0.0
    assert after["results_with_click_probability"] == 1.0
    assert after["judged"]["with_click_probability"] == 1.0
    assert all(
        p is not None and 0.0 <= p <= 1.0 for s in loop.traffic[1].sessions for p in s.probabilities
    )
    assert before["server"]["ece"] is None  # no served probabilities yet
    assert isinstance(after["server"]["ece"], float)
    for r in (before, after):
        assert 0.0 <= r["client"]["ctr@1"] <= r["client"]["ctr@10"] <= 1.0
        assert 0.0 <= r["judged"]["nDCG@10"] <= 1.0
        same = r["client_over_server_window"]
        assert same["requests"] == r["server"]["requests"]
        for k in ("ctr@1", "ctr@10", "mrr"):
            assert same[k] == pytest.approx(r["server"][k], abs=1e-12)
    # Everything settled fits the server's 2,000-request window here: round 1's 36, its 8
    # judged requests (flushed with round 2) and round 2's 36.
    assert before["server_window"] == {"requests": 36, "this_round": 36, "judged": 0}
    assert after["server_window"] == {"requests": 80, "this_round": 36, "judged": 8}
    changes = loop.report["ranking_changes"]["training_queries"]
    assert changes["queries"] == 12 and 0.0 <= changes["top1_changed"] <= 1.0
    assert set(after["client_se"]) == {"ctr@1", "ctr@10", "mrr"}
    table = online_loop.format_report(loop.report)
    assert "| CTR@1, client (all sessions) |" in table and "8 judged demo queries" in table


def test_client_side_quality_uses_the_servers_definitions() -> None:
    def session(shown: list[str], clicked: list[str], rid: str) -> online_loop.Session:
        return online_loop.Session("q", "s", rid, "v", shown, [None] * len(shown), clicked)

    figures = online_loop.traffic_quality(
        [
            session(["a", "b", "c"], ["b", "c"], "r1"),  # first click at 2
            session(["a", "b", "c"], ["a"], "r2"),  # first click at 1
            session(["a", "b", "c"], [], "r3"),
        ]
    )
    assert figures == {
        "ctr@1": pytest.approx(1 / 3),
        "ctr@10": pytest.approx(2 / 3),
        "mrr": pytest.approx((1 / 2 + 1) / 3),
        "requests": 3,
    }
    se = online_loop.standard_errors(
        [session(["a"], ["a"], "r1"), session(["a"], [], "r2")]
    )  # per-session CTR@1 values 1 and 0: sd 0.7071, se 0.5
    assert se["ctr@1"] == pytest.approx(0.5)


def test_arguments_round_trip() -> None:
    config, as_json = online_loop.parse_args(
        ["--no-dense", "--train-queries", "40", "--eta", "1.5", "--json"]
    )
    assert as_json and not config.dense and config.train_queries == 40 and config.eta == 1.5
    assert online_loop.loop_args(config) == [
        "--train-queries",
        "40",
        "--eta",
        "1.5",
        "--no-dense",
    ]
