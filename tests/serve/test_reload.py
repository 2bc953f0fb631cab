"""Hot reload under load: while clients search without pause, a new reranker is installed and
reloaded (by /admin/reload and by the manifest watcher); no request fails, each answer names
one version, and after a reload every answer comes from the new one."""

import json
import threading
import time

import httpx
import pytest
import uvicorn

from shopsearch.engine import SearchEngine
from shopsearch.index.store import install_reranker, load_index
from shopsearch.serve.app import ServeConfig, create_app

TOKEN = "t"


@pytest.fixture
def server(built_index, tmp_path, keyword_encoder, length_reranker, free_port):
    def open_engine(path):
        time.sleep(0.3)  # a load that takes a while, so requests overlap it
        index = load_index(path)
        index.analyzer.tokenize("预热")  # jieba's dictionary, loaded once
        return SearchEngine(index, encoder=keyword_encoder, reranker=length_reranker)

    config = ServeConfig(
        index=str(built_index),
        feedback_dir=str(tmp_path / "feedback"),
        admin_token=TOKEN,
        watch_interval_s=0.2,
        concurrency=2,
        queue=64,
        queue_timeout_s=30,
    )
    port = free_port()
    uv = uvicorn.Server(
        uvicorn.Config(
            create_app(config, open_engine=open_engine),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(timeout=10)


def new_model(tmp_path, n):
    folder = tmp_path / f"model-{n}"
    folder.mkdir()
    (folder / "training.json").write_text(json.dumps({"base_model": "fake", "run": n}))
    return folder


def test_reloads_under_concurrent_searches_fail_no_request(server, built_index, tmp_path):
    stop = threading.Event()
    answers: list[tuple[float, int, str | None]] = []  # (request start, status, version)
    lock = threading.Lock()

    def shopper(n):
        with httpx.Client(base_url=server, timeout=30) as client:
            while not stop.is_set():
                started = time.monotonic()
                got = client.get("/search", params={"q": ["bed", "夏季连衣裙"][n % 2], "k": 5})
                body = got.json()
                with lock:
                    answers.append((started, got.status_code, body.get("version")))

    threads = [threading.Thread(target=shopper, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    versions = []
    try:
        with httpx.Client(base_url=server, timeout=30) as admin:
            versions.append(admin.get("/ready").json()["version"])
            for n in range(3):
                time.sleep(0.4)
                install_reranker(built_index, new_model(tmp_path, n))
                if n % 2 == 0:  # by the endpoint...
                    reply = admin.post(
                        "/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}
                    )
                    assert reply.status_code == 200, reply.text
                    versions.append(reply.json()["version"])
                else:  # ...and by the watcher, which sees the new manifest by itself
                    deadline = time.monotonic() + 10
                    while admin.get("/ready").json()["version"] == versions[-1]:
                        assert time.monotonic() < deadline, "the watcher did not reload"
                        time.sleep(0.05)
                    versions.append(admin.get("/ready").json()["version"])
                switched = time.monotonic()
                time.sleep(0.4)
                with lock:
                    # Requests in flight at the swap finish on the old engine; every request
                    # started after it gets the new one.
                    after = [v for t, s, v in answers if t > switched]
                assert after and set(after) == {versions[-1]}
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert len(set(versions)) == 4
    assert len(answers) >= 20 and all(status == 200 for _, status, _ in answers)
    assert {v for _, _, v in answers} <= set(versions)


def test_a_failed_reload_keeps_the_old_engine_serving(server, built_index):
    with httpx.Client(base_url=server, timeout=30) as client:
        before = client.get("/ready").json()["version"]
        manifest = built_index / "manifest.json"
        good = manifest.read_text()
        manifest.write_text("{damaged")
        try:
            reply = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
            assert reply.status_code == 500
            assert "still serving the previous version" in reply.json()["error"]["message"]
            got = client.get("/search", params={"q": "bed"})
            assert got.status_code == 200 and got.json()["version"] == before
        finally:
            manifest.write_text(good)
