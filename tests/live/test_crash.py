"""kill -9 at random moments of build-index, update and compact: the index always opens,
passes its integrity check and answers as the state before or the state after the operation,
never a mix and never an error.

Each operation runs in a forked child process (the interpreter is warm, so each of the many
kill points costs milliseconds, not an interpreter start) that is killed with SIGKILL after a
random delay drawn over the operation's measured duration; the slow test does the same with
real `search-cli` processes.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

import pytest

from shopsearch.engine import SearchEngine
from shopsearch.index.integrity import check_index
from shopsearch.index.manifest import Manifest
from shopsearch.index.store import build_index, load_index
from shopsearch.index.update import compact_index, update_index
from shopsearch.retrieval.analysis import Analyzer
from shopsearch.retrieval.filters import Filters

QUERIES = ["夏季连衣裙", "king bed", "cotton", "锅", "microwave oven", "手机壳", "dress"]
KILLS_PER_OPERATION = 17  # 51 in all


@pytest.fixture(scope="module")
def analyzer():
    return Analyzer()


@pytest.fixture(scope="module")
def pool():
    from shopsearch.demo.catalog import generate_catalog

    return generate_catalog()[::16]  # 150 products


def state_of(index, analyzer, encoder):
    """What a reader sees: the whole catalogue and every stage's answers."""
    engine = SearchEngine(replace(index, analyzer=analyzer), encoder=encoder)
    answers = []
    for stage in ("bm25", "dense") if encoder else ("bm25",):
        for filters in (None, Filters(max_price=300.0)):
            for hits in engine.stage(stage).search(QUERIES, 10, filters):
                answers.append([(h.product_id, round(h.score, 5)) for h in hits])
    return [p.to_dict() for p in index.products], answers


class Expected:
    """The state a fresh build of a catalogue shows (cached by catalogue)."""

    def __init__(self, folder, analyzer, encoder):
        self.folder, self.analyzer, self.encoder = folder, analyzer, encoder
        self.cache = {}

    def __call__(self, catalogue):
        key = tuple(sorted((p.id, repr(p)) for p in catalogue.values()))
        if key not in self.cache:
            target = self.folder / f"fresh{len(self.cache)}"
            build_index(
                list(catalogue.values()), target, encoder=self.encoder, analyzer=self.analyzer
            )
            self.cache[key] = state_of(load_index(target), self.analyzer, self.encoder)
        return self.cache[key]


def run_killed(operation, delay):
    """Run ``operation`` in a forked child and SIGKILL it after ``delay`` seconds (None: let
    it finish); True if it was killed, False if it had finished."""
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            operation()
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    if delay is not None:
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError("the operation hung")
        time.sleep(0.0005)
    if os.WIFEXITED(status):
        assert os.WEXITSTATUS(status) == 0, "the operation failed in the child"
        return False
    assert os.WTERMSIG(status) == signal.SIGKILL
    return True


def random_update(rng, live, pool, serial):
    absent = [p for p in pool if p.id not in live]
    upserts = rng.sample(absent, min(len(absent), rng.randint(1, 5)))
    for pid in rng.sample(sorted(live), 4):
        old = live[pid]
        upserts.append(
            rng.choice(
                [
                    replace(old, title=f"{old.title} {serial}"),
                    replace(old, price=round(rng.uniform(1, 900), 2)),
                ]
            )
        )
    deletes = rng.sample(sorted(set(live) - {p.id for p in upserts}), rng.randint(1, 5))
    return upserts, deletes


def test_kill_minus_nine_at_random_moments(tmp_path, pool, analyzer, keyword_encoder):
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # no OpenMP thread pool in the parent across fork()
    try:
        _kill_at_random_moments(tmp_path, pool, analyzer, keyword_encoder)
    finally:
        faiss.omp_set_num_threads(threads)


def _kill_at_random_moments(tmp_path, pool, analyzer, encoder):
    rng = random.Random(7)
    index_dir = tmp_path / "idx"
    live = {p.id: p for p in pool[:100]}
    build_index(list(live.values()), index_dir, encoder=encoder, analyzer=analyzer)
    expected = Expected(tmp_path / "expected", analyzer, encoder)
    kills = {"build-index": 0, "update": 0, "compact": 0}
    durations: dict[str, float] = {}
    started = time.monotonic()
    serial = 0
    while min(kills.values()) < KILLS_PER_OPERATION:
        assert time.monotonic() - started < 120, f"too slow: {kills}"
        name = min(kills, key=kills.get)  # the operation with the fewest kills so far
        serial += 1
        after = dict(live)
        if name == "update":
            upserts, deletes = random_update(rng, live, pool, serial)
            after.update({p.id: p for p in upserts})
            for pid in deletes:
                del after[pid]

            def operation(upserts=upserts, deletes=deletes):
                update_index(
                    index_dir, upserts, deletes, encoder=encoder, analyzer=analyzer,
                    compact=rng.random() < 0.3,
                )  # fmt: skip
        elif name == "compact":
            if len(Manifest.read(index_dir).segments) == 1:  # give it something to merge
                upserts, deletes = random_update(rng, live, pool, serial)
                update_index(index_dir, upserts, deletes, encoder=encoder, analyzer=analyzer)
                live.update({p.id: p for p in upserts})
                for pid in deletes:
                    del live[pid]
                after = dict(live)

            def operation():
                compact_index(index_dir)
        else:
            after = {p.id: p for p in rng.sample(pool, rng.randint(60, 120))}

            def operation(after=after):
                build_index(list(after.values()), index_dir, encoder=encoder, analyzer=analyzer)

        before_state, after_state = expected(live), expected(after)
        if name not in durations:  # measure once, unkilled, to spread the kills over it
            t0 = time.perf_counter()
            assert not run_killed(operation, None)
            durations[name] = time.perf_counter() - t0
        else:
            kills[name] += run_killed(operation, rng.uniform(0, durations[name] * 1.1))
        report = check_index(index_dir)
        assert report.ok, (name, report.problems)
        seen = state_of(load_index(index_dir), analyzer, encoder)
        assert seen in (before_state, after_state), f"{name}: a state that is neither"
        live = after if seen == after_state else live
    # Whatever the kills left behind, the next writers collect: once a compaction and two
    # more generations are published, only the current generation's files are left.
    compact_index(index_dir)
    for pid in sorted(live)[:2]:
        update_index(index_dir, [], [pid], encoder=encoder, analyzer=analyzer, compact=False)
    manifest = Manifest.read(index_dir)
    assert {p.name for p in (index_dir / "segments").iterdir()} == {
        s["name"] for s in manifest.segments
    }
    assert {p.name for p in index_dir.iterdir()} == {
        "manifest.json",
        ".writer.lock",
        "segments",
        "deletes",
    }
    assert len(list((index_dir / "deletes").iterdir())) <= 2  # this generation's, the last


@pytest.mark.slow
def test_kill_minus_nine_of_real_cli_processes(tmp_path, pool):
    """The same with `search-cli` processes on a BM25-only index (each start costs a second
    or two, hence slow)."""
    import json

    from shopsearch.index.catalog import write_products

    cli = Path(sys.executable).with_name("search-cli")
    rng = random.Random(11)
    analyzer = Analyzer()
    index_dir = tmp_path / "idx"
    live = {p.id: p for p in pool[:100]}
    build_index(list(live.values()), index_dir, encoder=None, analyzer=analyzer)
    expected = Expected(tmp_path / "expected", analyzer, None)
    kills, durations = 0, {}
    for trial in range(90):
        if kills >= 15:
            break
        name = ("update", "compact", "build-index")[trial % 3]
        after = dict(live)
        changes = tmp_path / f"changes{trial}.jsonl"
        if name == "update":
            upserts, deletes = random_update(rng, live, pool, trial)
            after.update({p.id: p for p in upserts})
            for pid in deletes:
                del after[pid]
            write_products(upserts, changes)
            (tmp_path / "ids.txt").write_text("\n".join(deletes) + "\n")
            args = ["update", "--catalog", str(changes), "--delete", str(tmp_path / "ids.txt")]
        elif name == "compact":
            args = ["compact"]
        else:
            after = {p.id: p for p in rng.sample(pool, rng.randint(60, 120))}
            write_products(list(after.values()), changes)
            args = ["build-index", "--no-dense", "--catalog", str(changes)]
        before_state, after_state = expected(live), expected(after)
        t0 = time.perf_counter()
        process = subprocess.Popen(
            [str(cli), *args, "--index", str(index_dir), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        if name in durations:  # most of a process's time is its start: aim past it
            time.sleep(rng.uniform(0.5, 1.0) * durations[name])
            process.send_signal(signal.SIGKILL)
        out, _ = process.communicate()
        durations.setdefault(name, time.perf_counter() - t0)
        kills += process.returncode == -signal.SIGKILL
        if process.returncode == 0:
            json.loads(out)
        report = check_index(index_dir)
        assert report.ok, (name, report.problems)
        seen = state_of(load_index(index_dir), analyzer, None)
        assert seen in (before_state, after_state), f"{name}: a state that is neither"
        live = after if seen == after_state else live
    assert kills >= 15


def test_kill_minus_nine_during_reranker_installs(tmp_path, pool, analyzer, keyword_encoder):
    """An install is a generation like any other: after a kill at any moment the index holds
    either the old model with its record or the new one with its own, complete."""
    import json

    from shopsearch.index.store import install_reranker

    index_dir = tmp_path / "idx"
    build_index(pool[:40], index_dir, encoder=keyword_encoder, analyzer=analyzer)
    models = []
    for name in ("A", "B"):
        folder = tmp_path / f"model-{name}"
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        (folder / "training.json").write_text(json.dumps({"base_model": name}))
        (folder / "weights.bin").write_bytes(bytes([ord(name)]) * 4_000_000)
        models.append(folder)
    install_reranker(index_dir, models[0])
    durations = []
    for model in models * 2:  # unkilled installs, to spread the kills over one
        t0 = time.perf_counter()
        assert not run_killed(lambda model=model: install_reranker(index_dir, model), None)
        durations.append(time.perf_counter() - t0)
    duration = min(durations)
    rng = random.Random(3)
    kills = 0
    for attempt in range(200):
        if kills >= 15:
            break
        model = models[attempt % 2]
        kills += run_killed(
            lambda model=model: install_reranker(index_dir, model), rng.uniform(0, 0.9 * duration)
        )
        assert check_index(index_dir).ok
        index = load_index(index_dir)
        record, folder = index.manifest.reranker, index.reranker_path
        assert folder is not None and record is not None
        stored = json.loads((folder / "training.json").read_text())["base_model"]
        assert record["base_model"] == stored  # the record describes the model it points at
        assert (folder / "weights.bin").read_bytes() == bytes([ord(stored)]) * 4_000_000
    assert kills >= 15
