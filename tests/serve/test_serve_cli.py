"""`search-cli serve` as a user runs it: a real uvicorn process on 127.0.0.1, ready in seconds,
reloading on SIGHUP, stopping cleanly on SIGTERM; with two workers, /metrics sums both."""

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from shopsearch.index.store import update_manifest


def start(port, index, tmp_path, *extra):
    proc = subprocess.Popen(
        [
            os.path.join(os.path.dirname(sys.executable), "search-cli"),
            "serve",
            "--index",
            str(index),
            "--port",
            str(port),
            "--feedback-dir",
            str(tmp_path / "feedback"),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    while True:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return proc, url, time.monotonic() - started
        except httpx.HTTPError:
            pass
        assert time.monotonic() - started < 60, "not ready within 60 s"
        time.sleep(0.1)


def stop(proc):
    """SIGTERM, as a process manager stops it: uvicorn finishes what is in flight, then exits
    by re-raising the signal (exit status -15), or 0 from its multi-worker supervisor."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


@pytest.fixture
def bm25_index(tmp_path, catalog_path):
    from shopsearch.index.catalog import read_catalog
    from shopsearch.index.store import build_index

    build_index(read_catalog(catalog_path), tmp_path / "idx", encoder=None)
    return tmp_path / "idx"


def test_serve_answers_reloads_on_sighup_and_stops_cleanly(bm25_index, tmp_path, free_port):
    proc, url, seconds = start(free_port(), bm25_index, tmp_path, "--watch-interval", "0")
    try:
        assert seconds < 30
        got = httpx.get(f"{url}/search", params={"q": "夏季连衣裙", "k": 3})
        assert got.status_code == 200 and got.json()["results"]
        before = got.json()["version"]
        update_manifest(bm25_index, candidate_depth=50)  # what tune-fusion publishes
        time.sleep(0.5)
        assert httpx.get(f"{url}/ready").json()["version"] == before  # no watcher: unchanged
        os.kill(proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 20
        while httpx.get(f"{url}/ready").json()["version"] == before:
            assert time.monotonic() < deadline, "SIGHUP did not reload"
            time.sleep(0.1)
    finally:
        assert stop(proc) in (0, -signal.SIGTERM)
    assert "Traceback" not in proc.stdout.read()


def test_two_workers_share_metrics_and_feedback(bm25_index, tmp_path, free_port):
    proc, url, _ = start(free_port(), bm25_index, tmp_path, "--workers", "2")
    try:
        with httpx.Client(base_url=url) as client:
            bodies = [client.get("/search", params={"q": "bed", "k": 3}).json() for _ in range(8)]
            # Every click is attributed whichever worker takes it.
            for body in bodies:
                event = {"request_id": body["request_id"], "product_id": body["results"][0]["id"]}
                assert client.post("/events", json=event).status_code == 200
            text = client.get("/metrics").text
        searches = [
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("shopsearch_searches_total{")
        ]
        assert sum(searches) == 8
    finally:
        assert stop(proc) in (0, -signal.SIGTERM)


def test_serve_refuses_a_missing_index_before_binding(tmp_path):
    from click.testing import CliRunner

    from shopsearch.cli.main import cli

    result = CliRunner().invoke(cli, ["serve", "--index", str(tmp_path / "none")])
    assert result.exit_code == 2 and "does not exist" in result.output
