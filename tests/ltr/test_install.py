"""Installing a learning-to-rank model is a generation like any other: after a kill -9 at any
moment the index holds the old model with its record or the new one with its own, complete,
and a manifest written before LTR existed keeps its checksum."""

from __future__ import annotations

import json
import os
import random
import signal
import time

import numpy as np

from shopsearch.index.integrity import check_index
from shopsearch.index.manifest import Manifest
from shopsearch.index.store import build_index, install_ltr, load_index
from shopsearch.ltr.features import FEATURES
from shopsearch.ltr.model import Group, LTRModel, LTRParams, train_lambdamart


def run_killed(operation, delay):
    """Run ``operation`` in a forked child, SIGKILL it after ``delay`` seconds (None: let it
    finish); True if it was killed (as tests/live/test_crash.py does)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            operation()
        except BaseException:
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
        assert time.monotonic() < deadline, "the operation hung"
        time.sleep(0.0005)
    if os.WIFEXITED(status):
        assert os.WEXITSTATUS(status) == 0, "the operation failed in the child"
        return False
    return True


def _model(name: str) -> LTRModel:
    rng = np.random.default_rng(ord(name))
    groups = []
    for i in range(10):
        x = rng.random((6, len(FEATURES)))
        groups.append(Group(x, (x[:, 0] > 0.5).astype(np.int64), query_id=f"q{i}"))
    params = LTRParams(rounds=5, min_data_in_leaf=1, num_threads=1)
    return train_lambdamart(groups, params=params, info={"trained_on": name})


def test_kill_minus_nine_during_ltr_installs(tmp_path, products):
    index_dir = tmp_path / "idx"
    build_index(products, index_dir, encoder=None)
    folders = []
    for name in ("A", "B"):
        folder = _model(name).save(tmp_path / f"model-{name}")
        (folder / "padding.bin").write_bytes(name.encode() * 4_000_000)  # a slower copy
        folders.append(folder)

    def install(folder):
        info = json.loads((folder / "ltr.json").read_text())
        install_ltr(index_dir, folder, {"trained_on": info["trained_on"]})

    install(folders[0])
    durations = []
    for folder in folders * 2:
        t0 = time.perf_counter()
        assert not run_killed(lambda folder=folder: install(folder), None)
        durations.append(time.perf_counter() - t0)
    duration = min(durations)
    rng = random.Random(5)
    kills = 0
    for attempt in range(200):
        if kills >= 10:
            break
        folder = folders[attempt % 2]
        kills += run_killed(lambda folder=folder: install(folder), rng.uniform(0, 0.9 * duration))
        assert check_index(index_dir).ok
        index = load_index(index_dir)
        assert index.ltr_path is not None and index.manifest.ltr is not None
        model = LTRModel.load(index.ltr_path)
        # the record describes the model it points at, and that model is complete
        assert index.manifest.ltr["trained_on"] == model.info["trained_on"]
        name = model.info["trained_on"]
        assert (index.ltr_path / "padding.bin").read_bytes() == name.encode() * 4_000_000
    assert kills >= 10


def test_a_manifest_without_ltr_keeps_its_checksum(built_index):
    raw = json.loads((built_index / "manifest.json").read_text())
    assert "ltr" not in raw  # written without the field while no model is installed
    manifest = Manifest.read(built_index)
    assert manifest.ltr is None and manifest.checksum == raw["checksum"]
