"""The feedback store: impressions and clicks kept durably, written once to the click log that
training reads, refusing events it cannot attribute, surviving kill -9."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from shopsearch.serve.feedback import FeedbackError, FeedbackStore, ShownRow
from shopsearch.training.clicks import read_click_log


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def shown(*ids, probability=0.5):
    return [ShownRow(pid, rank, probability) for rank, pid in enumerate(ids, start=1)]


def read_all(store):
    return [imp for path in store.log_files() for imp in read_click_log(path)]


def raw_lines(store):
    return [
        json.loads(line)
        for path in store.log_files()
        for line in path.read_text(encoding="utf-8").splitlines()
    ]


def test_a_click_becomes_a_click_log_line_at_the_served_position(tmp_path):
    clock = Clock()
    store = FeedbackStore(tmp_path, window_s=60, clock=clock)
    store.record_impressions(
        "r1", "夏季连衣裙", shown("p1", "p2", "p3"), stage="rerank", version="v1", session_id="s1"
    )
    event = store.record_event("r1", "p2", "click")
    assert event.position == 2
    store.record_event("r1", "p3", "purchase")
    assert store.export() == 0  # the window is still open
    clock.now += 61
    assert store.export() == 3
    log = read_all(store)
    assert [(i.product_id, i.position, i.clicked, i.purchased) for i in log] == [
        ("p1", 1, False, False),
        ("p2", 2, True, False),
        ("p3", 3, True, True),
    ]
    assert {i.query for i in log} == {"夏季连衣裙"} and {i.session_id for i in log} == {"s1"}
    extra = raw_lines(store)[0]
    assert extra["request_id"] == "r1" and extra["click_probability"] == 0.5
    assert extra["version"] == "v1" and extra["timestamp"].endswith("Z")
    assert store.export() == 0  # written once


@pytest.mark.parametrize(
    "request_id, product_id, kind, status",
    [("nope", "p1", "click", 404), ("r1", "p9", "click", 422), ("r1", "p1", "view", 422)],
)
def test_events_that_cannot_be_attributed_are_refused(
    tmp_path, request_id, product_id, kind, status
):
    store = FeedbackStore(tmp_path)
    store.record_impressions("r1", "bed", shown("p1"), stage="hybrid", version="v")
    with pytest.raises(FeedbackError) as caught:
        store.record_event(request_id, product_id, kind)
    assert caught.value.status == status


def test_a_click_after_the_window_closed_is_refused(tmp_path):
    clock = Clock()
    store = FeedbackStore(tmp_path, window_s=10, clock=clock)
    store.record_impressions("r1", "bed", shown("p1"), stage="hybrid", version="v")
    clock.now += 11
    with pytest.raises(FeedbackError) as caught:
        store.record_event("r1", "p1", "click")
    assert caught.value.status == 409
    store.export()
    assert read_all(store)[0].clicked is False


def test_workers_share_one_store(tmp_path):
    # A click can reach another worker process than the search did.
    serving, other = FeedbackStore(tmp_path), FeedbackStore(tmp_path)
    serving.record_impressions("r1", "bed", shown("p1", "p2"), stage="hybrid", version="v")
    assert other.record_event("r1", "p2", "click").position == 2
    assert other.export(close_all=True) == 2
    assert [i.clicked for i in read_all(serving)] == [False, True]


def test_an_interrupted_export_is_finished_exactly_once(tmp_path):
    store = FeedbackStore(tmp_path)
    for n in range(3):
        store.record_impressions(f"r{n}", "bed", shown("p1", "p2"), stage="hybrid", version="v")
    # The exporter claimed a batch and died halfway through appending it.
    batch = store._claim_batch(float("inf"), 100)
    lines = store._batch_lines(batch)
    path = (
        store.folder
        / store._connection()
        .execute("SELECT file FROM batches WHERE batch = ?", (batch,))
        .fetchone()[0]
    )
    path.write_text("".join(lines[:3]) + lines[3][:10], encoding="utf-8")
    restarted = FeedbackStore(tmp_path)
    restarted.record_impressions("r9", "bed", shown("p3"), stage="hybrid", version="v")
    restarted.export(close_all=True)
    log = read_all(restarted)
    assert len(log) == 7
    assert sorted(r["request_id"] for r in raw_lines(restarted)) == sorted(
        ["r0", "r0", "r1", "r1", "r2", "r2", "r9"]
    )


def test_the_click_log_rotates_by_size_and_by_day(tmp_path):
    clock = Clock(1_800_000_000.0)  # 2027-01-15 08:00 UTC
    store = FeedbackStore(tmp_path, window_s=0, max_log_bytes=2000, clock=clock)
    for n in range(12):
        store.record_impressions(f"r{n}", "bed", shown("p1", "p2"), stage="hybrid", version="v")
        store.export()
    names = [p.name for p in store.log_files()]
    assert names[0] == "clicks-2027-01-15.jsonl" and len(names) > 1
    assert all(p.stat().st_size <= 2000 for p in store.log_files())
    clock.now += 24 * 3600
    store.record_impressions("next-day", "bed", shown("p1"), stage="hybrid", version="v")
    store.export()
    assert store.log_files()[-1].name == "clicks-2027-01-16.jsonl"
    assert len(read_all(store)) == 25


def test_an_unknown_fsync_policy_is_refused(tmp_path):
    with pytest.raises(Exception, match="fsync"):
        FeedbackStore(tmp_path, fsync="sometimes")


WRITER = textwrap.dedent(
    r"""
    import sys
    from shopsearch.serve.feedback import FeedbackStore, ShownRow
    store = FeedbackStore(sys.argv[1], fsync=sys.argv[2])
    n = 0
    while True:
        rid = f"r{n}"
        store.record_impressions(
            rid, "连衣裙", [ShownRow(f"p{i}", i, 0.1) for i in range(1, 11)],
            stage="rerank", version="v",
        )
        sys.stdout.write(f"served {rid}\n"); sys.stdout.flush()
        store.record_event(rid, f"p{n % 10 + 1}", "click")
        sys.stdout.write(f"clicked {rid}\n"); sys.stdout.flush()
        if n % 7 == 0:
            store.export(close_all=True)
        n += 1
    """
)


@pytest.mark.parametrize("fsync", ["normal", "always"])
def test_kill_9_loses_no_acknowledged_event(tmp_path, fsync):
    """A process killed at random moments: every impression and click it acknowledged
    (printed after the commit) is in the store or, once exported, in the click log exactly
    once; the store opens and exports cleanly afterwards."""
    import random

    rng = random.Random(0)
    for round_ in range(3):
        folder = tmp_path / f"round-{round_}"
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(folder), fsync],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        time.sleep(1.2 + 0.6 * rng.random())
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        acknowledged: dict[str, set[str]] = {"served": set(), "clicked": set()}
        complete = out[: out.rfind("\n") + 1]  # a line cut by the kill was not acknowledged
        for line in complete.splitlines():
            kind, rid = line.split()
            acknowledged[kind].add(rid)
        assert acknowledged["served"], "the writer was killed before it served anything"
        store = FeedbackStore(folder)
        store.export(close_all=True)
        lines = raw_lines(store)
        by_request: dict[str, list[dict]] = {}
        for row in lines:
            by_request.setdefault(row["request_id"], []).append(row)
        for rid in acknowledged["served"]:
            assert len(by_request[rid]) == 10, rid  # all ten rows, written once
        for rid in acknowledged["clicked"]:
            assert sum(row["clicked"] for row in by_request[rid]) == 1, rid
        # At most the one request being committed at the kill is in the store unacknowledged.
        assert len(by_request) - len(acknowledged["served"]) <= 1
        assert len(read_all(store)) == len(lines)  # every line parses
        store.close()
