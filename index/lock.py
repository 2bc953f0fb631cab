"""One writer at a time per index: an exclusive ``flock`` on ``<index>/.writer.lock``.

Every command that changes an index (``build-index`` over an existing one, ``update``,
``compact``, the tuners' manifest updates, installing a reranker) holds it while it works.
The kernel releases the lock when its holder exits, however it exits, so a writer killed with
SIGKILL leaves no stale lock behind: the next writer simply gets it. The file also says who
holds it (pid, command, since when), for the message a second writer gets. The file itself is
never removed or replaced (a new inode would be a second lock), and readers never take it:
they read whole published generations (index/generations.py).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from shopsearch.errors import SearchError

LOCK_FILE = ".writer.lock"


class IndexLockedError(SearchError):
    """Another process (or another writer in this one) is changing the index."""


@contextmanager
def writer_lock(index_dir: str | Path, command: str) -> Iterator[None]:
    """Hold the index's writer lock for the ``with`` block, or raise ``IndexLockedError`` at
    once (naming the holder) when another writer has it."""
    index_dir = Path(index_dir)
    path = index_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise SearchError(f"cannot lock index {index_dir} for writing ({exc})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IndexLockedError(_locked_message(index_dir, os.pread(fd, 4096, 0))) from None
        holder = {
            "pid": os.getpid(),
            "command": command,
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": socket.gethostname(),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


def _locked_message(index_dir: Path, raw: bytes) -> str:
    try:
        holder = json.loads(raw.decode("utf-8"))
        who = (
            f"pid {holder['pid']} ({holder['command']}, since {holder['since']}"
            + (f", on {holder['host']}" if holder.get("host") != socket.gethostname() else "")
            + ")"
        )
    except (ValueError, KeyError, TypeError):
        who = "another process"
    return f"index {index_dir} is being changed by {who}; try again when it finishes"
