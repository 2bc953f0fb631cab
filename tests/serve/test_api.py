"""The HTTP API over the fixture index: the served JSON is `query --json`'s plus request id and
versions, clicks are attributed from the server's own record, every bad input gets a JSON
error with the right status, and /metrics exposes traffic and online quality."""

import pytest
from fastapi.testclient import TestClient

from shopsearch.engine import SearchEngine
from shopsearch.index.store import load_index
from shopsearch.serve.app import ServeConfig, create_app
from shopsearch.training.clicks import read_click_log

TOKEN = "s3cret"


@pytest.fixture
def opener(keyword_encoder, length_reranker):
    def open_engine(path):
        return SearchEngine(
            load_index(path), encoder=keyword_encoder, reranker=length_reranker, depth=20
        )

    return open_engine


@pytest.fixture
def client(built_index, tmp_path, opener):
    config = ServeConfig(
        index=str(built_index),
        feedback_dir=str(tmp_path / "feedback"),
        admin_token=TOKEN,
        watch_interval_s=0,
        export_interval_s=3600,
    )
    with TestClient(create_app(config, open_engine=opener)) as test_client:
        yield test_client


def admin(client, path):
    return client.post(path, headers={"Authorization": f"Bearer {TOKEN}"})


def test_get_and_post_search_return_query_json_plus_request_id_and_versions(
    client, built_index, opener
):
    got = client.get("/search", params={"q": "夏季连衣裙", "k": 3, "explain": "true"})
    assert got.status_code == 200
    body = got.json()
    assert got.headers["x-request-id"] == body["request_id"]
    assert got.headers["x-shopsearch-version"] == body["version"]
    assert body["versions"]["index"] and body["stage"] == "rerank"
    expected = opener(built_index).search("夏季连衣裙", k=3, explain=True).to_dict()
    for key in ("query", "stage", "query_terms", "reranked", "calibrated", "notes"):
        assert body[key] == expected[key]
    assert [r["id"] for r in body["results"]] == [r["id"] for r in expected["results"]]
    assert all(0 < r["click_probability"] < 1 and "matched_terms" in r for r in body["results"])
    assert {"bm25", "encode", "dense", "fusion", "rerank", "total"} <= {
        {"encode_query": "encode", "dense_search": "dense"}.get(k, k) for k in body["timings_ms"]
    }
    posted = client.post("/search", json={"q": "夏季连衣裙", "k": 3})
    assert [r["id"] for r in posted.json()["results"]] == [r["id"] for r in expected["results"]]
    assert posted.json()["request_id"] != body["request_id"]


def test_a_click_is_logged_at_the_position_the_server_showed(client, tmp_path):
    body = client.get("/search", params={"q": "bed", "k": 4, "session_id": "s1"}).json()
    second = body["results"][1]["id"]
    event = client.post("/events", json={"request_id": body["request_id"], "product_id": second})
    assert event.status_code == 200 and event.json()["position"] == 2
    flushed = admin(client, "/admin/feedback/flush").json()
    assert flushed["impressions_written"] == 4
    log = read_click_log(flushed["files"][0])
    assert [(i.position, i.clicked) for i in log] == [(1, False), (2, True), (3, False), (4, False)]
    assert log[1].product_id == second and {i.session_id for i in log} == {"s1"}
    assert {i.query for i in log} == {"bed"}


@pytest.mark.parametrize(
    "params, message",
    [
        ({"q": ""}, "q is empty"),
        ({"q": "   "}, "q is empty"),
        ({"q": "x" * 10_000}, "at most 500"),
        ({"q": "bed", "k": -1}, "k must be between 1 and 100"),
        ({"q": "bed", "k": 10**6}, "k must be between 1 and 100"),
        ({"q": "bed", "k": "ten"}, "k"),
        ({"q": "bed", "min_price": 50, "max_price": 10}, "min_price 50.0 is above max_price"),
        ({"q": "bed", "min_price": "cheap"}, "min_price"),
        ({"q": "bed", "stage": "magic"}, "stage must be one of"),
        ({}, "q"),
    ],
)
def test_bad_search_parameters_are_400_with_a_message(client, params, message):
    got = client.get("/search", params=params)
    assert got.status_code == 400, got.text
    error = got.json()["error"]
    assert error["type"] == "bad_request" and message in error["message"]


@pytest.mark.parametrize(
    "query",
    [
        "🛏️👗 bed",
        "'; DROP TABLE products; --",
        "<script>alert(1)</script> dress",
        "連衣裙",  # traditional characters
        "bed OR 1=1",
    ],
)
def test_odd_but_valid_queries_are_answered(client, query):
    got = client.get("/search", params={"q": query})
    assert got.status_code == 200
    assert got.json()["query"] == query  # returned as data; escaping is the page's job


def test_an_unknown_category_is_an_empty_answer_that_says_why(client):
    body = client.get("/search", params={"q": "bed", "category": "Spaceships"}).json()
    assert body["results"] == []
    assert any("no product has the category 'Spaceships'" in n for n in body["notes"])


def test_malformed_json_and_oversized_bodies_are_refused(client):
    bad = client.post("/search", content=b"{bad", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
    big = client.post("/search", content=b"x" * 70_000, headers={"content-type": "text/plain"})
    assert big.status_code == 413


@pytest.mark.parametrize(
    "event, status",
    [
        ({"request_id": "never-served", "product_id": "p01"}, 404),
        ({"product_id": "p01"}, 400),
        ({"request_id": "RID", "product_id": "not-shown"}, 422),
        ({"request_id": "RID", "product_id": "SHOWN", "type": "like"}, 422),
    ],
)
def test_events_the_server_cannot_attribute_are_refused(client, event, status):
    body = client.get("/search", params={"q": "bed", "k": 2}).json()
    event = {
        k: {"RID": body["request_id"], "SHOWN": body["results"][0]["id"]}.get(v, v)
        for k, v in event.items()
    }
    got = client.post("/events", json=event)
    assert got.status_code == status, got.text
    assert got.json()["error"]["message"]


def test_admin_endpoints_need_the_token_and_are_off_without_one(
    client, built_index, tmp_path, opener
):
    assert client.post("/admin/reload").status_code == 401
    wrong = client.post("/admin/reload", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert admin(client, "/admin/reload").status_code == 200
    config = ServeConfig(index=str(built_index), feedback_dir=str(tmp_path / "f2"))
    with TestClient(create_app(config, open_engine=opener)) as no_admin:
        assert no_admin.post("/admin/reload").status_code == 404


def test_no_index_means_503_not_a_traceback(tmp_path):
    config = ServeConfig(index=str(tmp_path / "missing"), feedback_dir=str(tmp_path / "f"))
    with TestClient(create_app(config)) as client:
        assert client.get("/health").json() == {"status": "ok"}
        ready = client.get("/ready")
        assert ready.status_code == 503 and "does not exist" in ready.json()["error"]
        got = client.get("/search", params={"q": "bed"})
        assert got.status_code == 503 and got.headers["retry-after"]
        assert "no index is loaded" in got.json()["error"]["message"]


def test_ready_facets_docs_and_page(client):
    ready = client.get("/ready").json()
    assert ready["ready"] and ready["products"] == 12
    facets = client.get("/facets").json()
    assert facets["categories"] and facets["price"]["min"] <= facets["price"]["max"]
    assert client.get("/docs").status_code == 200
    assert "/search" in client.get("/openapi.json").json()["paths"]
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


def metric(text, name, labels=""):
    for line in text.splitlines():
        if line.startswith(f"{name}{labels} ") or line.startswith(f"{name}{{{labels}}} "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} {labels} not in /metrics")


def test_metrics_count_traffic_and_measure_online_quality(client):
    for n in range(6):
        body = client.get("/search", params={"q": "bed", "k": 5}).json()
        if n % 2 == 0:  # half the requests get a click at rank 1
            top = body["results"][0]["id"]
            client.post("/events", json={"request_id": body["request_id"], "product_id": top})
    client.get("/search", params={"q": "bed", "category": "Spaceships"})
    client.get("/search", params={"q": ""})
    admin(client, "/admin/feedback/flush")
    text = client.get("/metrics").text
    assert metric(text, "shopsearch_searches_total", 'stage="rerank"') == 7
    assert metric(text, "shopsearch_zero_result_searches_total") == 1
    assert metric(text, "shopsearch_errors_total", 'type="bad_request"') == 1
    assert metric(text, "shopsearch_feedback_events_total", 'type="click"') == 3
    # The five repeats of "bed" are answered from the result cache: the pipeline ran once.
    assert metric(text, "shopsearch_result_cache_lookups_total", 'outcome="hit"') == 5
    assert metric(text, "shopsearch_result_cache_lookups_total", 'outcome="miss"') == 2
    for step in ("analysis", "bm25", "encode", "dense", "fusion", "rerank"):
        assert metric(text, "shopsearch_search_step_seconds_count", f'step="{step}"') == 2
    assert metric(text, "shopsearch_search_step_seconds_count", 'step="total"') == 7
    assert metric(text, "shopsearch_in_flight_requests") == 0
    assert metric(text, "shopsearch_online_window_requests") == 7
    assert metric(text, "shopsearch_online_ctr", 'k="1"') == pytest.approx(3 / 7)
    assert metric(text, "shopsearch_online_mrr") == pytest.approx(3 / 7)
    assert 0 <= metric(text, "shopsearch_online_calibration_ece") <= 1
    requests = metric(text, "shopsearch_http_requests_total", 'endpoint="/search",status="200"')
    assert requests == 7


def test_the_page_is_served_with_its_assets(client):
    html = client.get("/").text
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in html
        assert client.get(asset).status_code == 200


def test_feedback_survives_a_restart_of_the_app(built_index, tmp_path, opener):
    config = ServeConfig(
        index=str(built_index), feedback_dir=str(tmp_path / "fb"), admin_token=TOKEN
    )
    with TestClient(create_app(config, open_engine=opener)) as first:
        body = first.get("/search", params={"q": "bed", "k": 3}).json()
    with TestClient(create_app(config, open_engine=opener)) as second:
        # The open request outlived the first server: the next one takes its click.
        top = body["results"][1]["id"]
        late = second.post("/events", json={"request_id": body["request_id"], "product_id": top})
        assert late.status_code == 200 and late.json()["position"] == 2
        files = admin(second, "/admin/feedback/flush").json()["files"]
    log = read_click_log(files[0])
    assert [(i.position, i.clicked) for i in log] == [(1, False), (2, True), (3, False)]


@pytest.mark.parametrize(("cache_size", "hits"), [(4096, 2), (0, 0)])
def test_cache_size_reaches_the_served_engine(
    built_index, tmp_path, keyword_models, cache_size, hits
):
    config = ServeConfig(
        index=str(built_index),
        feedback_dir=str(tmp_path / "feedback"),
        watch_interval_s=0,
        export_interval_s=3600,
        cache_size=cache_size,
    )
    with TestClient(create_app(config)) as client:
        for _ in range(3):
            assert client.get("/search", params={"q": "bed", "k": 3}).status_code == 200
        text = client.get("/metrics").text
    assert metric(text, "shopsearch_result_cache_lookups_total", 'outcome="miss"') == 3 - hits
