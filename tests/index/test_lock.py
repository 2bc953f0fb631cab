"""One writer at a time: a second one gets a clear error, a killed one blocks nobody."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace

import pytest

from shopsearch.index.lock import IndexLockedError, writer_lock
from shopsearch.index.manifest import Manifest
from shopsearch.index.store import build_index, update_manifest
from shopsearch.index.update import compact_index, update_index


def test_a_second_writer_is_refused_with_who_holds_the_lock(tmp_path, products):
    index_dir = tmp_path / "idx"
    build_index(products, index_dir, encoder=None)
    with writer_lock(index_dir, "update"):
        message = rf"index {index_dir} is being changed by pid {os.getpid()} \(update, since "
        with pytest.raises(IndexLockedError, match=message):
            update_index(index_dir, [replace(products[0], price=1.0)], [])
        with pytest.raises(IndexLockedError, match="try again when it finishes"):
            compact_index(index_dir)
        with pytest.raises(IndexLockedError):
            build_index(products[:3], index_dir, encoder=None)
        with pytest.raises(IndexLockedError):
            update_manifest(index_dir, candidate_depth=5)
    # Released on leaving the block, also when the writer fails.
    with pytest.raises(RuntimeError), writer_lock(index_dir, "update"):
        raise RuntimeError("writer crashed")
    assert update_index(index_dir, [replace(products[0], price=1.0)], []).generation == 2
    # A rebuild keeps the lock file where the next writer looks for it.
    build_index(products[:3], index_dir, encoder=None)
    assert (index_dir / ".writer.lock").is_file()
    with writer_lock(index_dir, "compact"), pytest.raises(IndexLockedError):
        update_index(index_dir, [], [products[0].id])


def test_a_writer_killed_while_holding_the_lock_does_not_block_the_next(tmp_path, products):
    index_dir = tmp_path / "idx"
    build_index(products, index_dir, encoder=None)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from shopsearch.index.lock import writer_lock\n"
            f"with writer_lock({str(index_dir)!r}, 'update'):\n"
            "    print('locked', flush=True)\n"
            "    time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(IndexLockedError, match=rf"pid {holder.pid} \(update"):
            update_index(index_dir, [], ["p01"])
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    finally:
        holder.kill()
        holder.wait()
    # The stale lock file (it still names the dead pid) does not stop the next writer.
    assert str(holder.pid) in (index_dir / ".writer.lock").read_text()
    summary = update_index(index_dir, [], ["p01"])
    assert summary.deleted == ["p01"] and Manifest.read(index_dir).generation == 2
