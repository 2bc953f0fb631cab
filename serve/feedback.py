"""What shoppers were shown and what they clicked, kept durably and written out as a click log.

Two stores, each with one job:

- **The feedback database** (``feedback.sqlite3``, SQLite in WAL mode): every served result list
  (request id, query, session, each product's position and served click probability) is one
  transaction, committed before the HTTP response leaves; ``POST /events`` marks a click or
  purchase on a shown row. SQLite because several server worker processes must share it (a
  click can reach another worker than the search did), and because a committed transaction
  survives ``kill -9``. ``fsync="always"`` (SQLite ``synchronous=FULL``) also survives power
  loss; the default ``"normal"`` (``synchronous=NORMAL``) can lose the transactions since the
  last WAL checkpoint on power loss, never on a process crash.
- **The click log** (``clicks-YYYY-MM-DD[.N].jsonl``): once a request's feedback window has
  passed (no more clicks are taken for it), its rows are appended to the day's file in the
  format ``train-reranker --clicks`` reads (:mod:`shopsearch.training.clicks`: one impression
  per line), plus ``request_id``, ``click_probability``, ``stage`` and ``version`` fields the
  reader ignores. A file is rotated at ``max_log_bytes`` and at midnight UTC.

Export is exactly-once across crashes: a batch is first recorded (file, byte offset, its
requests), then written, flushed and fsynced, then marked done. A batch found not done on the
next export was interrupted: its file is truncated back to the recorded offset and the batch
rewritten. An export lock file keeps one exporter at a time across workers.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from shopsearch.errors import SearchError
from shopsearch.files import fsync_dir

DATABASE_FILE = "feedback.sqlite3"
EXPORT_LOCK_FILE = ".export.lock"
LOG_PREFIX = "clicks-"
DEFAULT_WINDOW_S = 600.0
DEFAULT_MAX_LOG_BYTES = 64 * 1024 * 1024
# Exported rows stay in the database this long for the online quality metrics; the click log
# keeps them for good.
DEFAULT_RETENTION_S = 7 * 24 * 3600.0
FSYNC_POLICIES = ("normal", "always")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    query TEXT NOT NULL,
    session_id TEXT,
    user_id TEXT,
    served_at REAL NOT NULL,
    stage TEXT NOT NULL,
    version TEXT NOT NULL,
    batch INTEGER
);
CREATE INDEX IF NOT EXISTS requests_by_batch ON requests (batch, served_at);
CREATE TABLE IF NOT EXISTS shown (
    request_id TEXT NOT NULL,
    product_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    probability REAL,
    clicked INTEGER NOT NULL DEFAULT 0,
    purchased INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (request_id, product_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batches (
    batch INTEGER PRIMARY KEY,
    file TEXT NOT NULL,
    start_offset INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0
);
"""


class FeedbackError(SearchError):
    """An event the server refuses; ``status`` is the HTTP status that says why."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ShownRow:
    """One product as served: its 1-based position and the click probability shown, if any."""

    product_id: str
    position: int
    probability: float | None


@dataclass(frozen=True)
class RecordedEvent:
    request_id: str
    product_id: str
    position: int
    kind: str


@dataclass(frozen=True)
class SettledImpression:
    """A row of a request whose feedback window has closed, for online quality metrics."""

    request_id: str
    position: int
    probability: float | None
    clicked: bool


def _utc_iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat().replace("+00:00", "Z")


class FeedbackStore:
    """The feedback database and click log under one folder; safe to share between threads
    and processes (each thread gets its own SQLite connection)."""

    def __init__(
        self,
        folder: str | Path,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        max_log_bytes: int = DEFAULT_MAX_LOG_BYTES,
        retention_s: float = DEFAULT_RETENTION_S,
        fsync: str = "normal",
        clock: Any = time.time,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise SearchError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, got {fsync!r}")
        if window_s < 0:
            raise SearchError(f"the feedback window must be >= 0 seconds, got {window_s}")
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SearchError(f"cannot create the feedback folder {self.folder}: {exc}") from None
        self.window_s = window_s
        self.max_log_bytes = max_log_bytes
        self.retention_s = retention_s
        self.fsync = fsync
        self.clock = clock
        self._local = threading.local()
        # executescript commits on its own; the statements are idempotent.
        self._connection().executescript(_SCHEMA)

    # -- connections -------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.folder / DATABASE_FILE, timeout=30.0, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if self.fsync == 'always' else 'NORMAL'}")
            self._local.db = db
        return db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front, so a check-then-write (is this
        # request still open? then mark the click) cannot interleave with an export.
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- serving -----------------------------------------------------------------------

    def record_impressions(
        self,
        request_id: str,
        query: str,
        shown: Sequence[ShownRow],
        *,
        stage: str,
        version: str,
        session_id: str | None = None,
        user_id: str | None = None,
    ) -> None:
        """Store one served result list; committed (durable) when this returns."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO requests (request_id, query, session_id, user_id, served_at, "
                "stage, version) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (request_id, query, session_id, user_id, self.clock(), stage, version),
            )
            db.executemany(
                "INSERT INTO shown (request_id, product_id, position, probability) "
                "VALUES (?, ?, ?, ?)",
                [(request_id, r.product_id, r.position, r.probability) for r in shown],
            )

    def record_event(self, request_id: str, product_id: str, kind: str) -> RecordedEvent:
        """Mark a click (or a purchase, which implies a click) on a product a request showed.

        The position comes from the stored impression, never from the client. Refuses an
        unknown request (404), a product it did not show (422) and a request whose feedback
        window has closed (409)."""
        if kind not in ("click", "purchase"):
            raise FeedbackError(f"type must be 'click' or 'purchase', got {kind!r}", 422)
        with self._transaction() as db:
            request = db.execute(
                "SELECT served_at, batch FROM requests WHERE request_id = ?", (request_id,)
            ).fetchone()
            if request is None:
                raise FeedbackError(
                    f"unknown request_id {request_id!r}: events must name a request_id "
                    "that /search returned",
                    404,
                )
            served_at, batch = request
            if batch is not None or self.clock() - served_at > self.window_s:
                raise FeedbackError(
                    f"request {request_id!r} was served more than {self.window_s:.0f} s ago; "
                    "its feedback window is closed",
                    409,
                )
            row = db.execute(
                "SELECT position FROM shown WHERE request_id = ? AND product_id = ?",
                (request_id, product_id),
            ).fetchone()
            if row is None:
                raise FeedbackError(
                    f"product {product_id!r} was not shown by request {request_id!r}", 422
                )
            purchased = 1 if kind == "purchase" else 0
            db.execute(
                "UPDATE shown SET clicked = 1, purchased = MAX(purchased, ?) "
                "WHERE request_id = ? AND product_id = ?",
                (purchased, request_id, product_id),
            )
        return RecordedEvent(request_id, product_id, int(row[0]), kind)

    # -- export to the click log -------------------------------------------------------

    def export(self, *, close_all: bool = False, limit: int = 5000) -> int:
        """Append the requests whose window has passed (all open ones with ``close_all``) to
        the click log; returns the number of impressions written. Another process already
        exporting makes this a no-op that returns 0."""
        lock_path = self.folder / EXPORT_LOCK_FILE
        with open(lock_path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0
            try:
                written = self._finish_interrupted()
                cutoff = float("inf") if close_all else self.clock() - self.window_s
                while True:
                    batch = self._claim_batch(cutoff, limit)
                    if batch is None:
                        self._forget_old()
                        return written
                    written += self._write_batch(batch)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _forget_old(self) -> None:
        old = "SELECT request_id FROM requests WHERE batch IS NOT NULL AND served_at < ?"
        cutoff = self.clock() - self.retention_s
        with self._transaction() as db:
            db.execute(f"DELETE FROM shown WHERE request_id IN ({old})", (cutoff,))
            db.execute(f"DELETE FROM requests WHERE request_id IN ({old})", (cutoff,))

    def _log_file(self, incoming: int) -> Path:
        day = datetime.fromtimestamp(self.clock(), tz=timezone.utc).strftime("%Y-%m-%d")
        part = 0
        while True:
            suffix = f".{part}" if part else ""
            path = self.folder / f"{LOG_PREFIX}{day}{suffix}.jsonl"
            size = path.stat().st_size if path.exists() else 0
            if size == 0 or size + incoming <= self.max_log_bytes:
                return path
            part += 1

    def _claim_batch(self, cutoff: float, limit: int) -> int | None:
        with self._transaction() as db:
            ids = [
                r[0]
                for r in db.execute(
                    "SELECT request_id FROM requests WHERE batch IS NULL AND served_at <= ? "
                    "ORDER BY served_at, request_id LIMIT ?",
                    (cutoff, limit),
                )
            ]
            if not ids:
                return None
            # A rough size (300 bytes a line) so that rotation happens before, not after,
            # a file passes its limit.
            rows = db.execute(
                f"SELECT COUNT(*) FROM shown WHERE request_id IN ({','.join('?' * len(ids))})",
                ids,
            ).fetchone()[0]
            path = self._log_file(300 * rows)
            offset = path.stat().st_size if path.exists() else 0
            batch = db.execute(
                "INSERT INTO batches (file, start_offset) VALUES (?, ?)", (path.name, offset)
            ).lastrowid
            db.executemany(
                "UPDATE requests SET batch = ? WHERE request_id = ?", [(batch, i) for i in ids]
            )
        assert batch is not None
        return int(batch)

    def _finish_interrupted(self) -> int:
        db = self._connection()
        written = 0
        for batch, name, offset in db.execute(
            "SELECT batch, file, start_offset FROM batches WHERE done = 0 ORDER BY batch"
        ).fetchall():
            path = self.folder / name
            if path.exists() and path.stat().st_size > offset:
                with open(path, "r+b") as handle:
                    handle.truncate(offset)
                    os.fsync(handle.fileno())
            written += self._write_batch(int(batch))
        return written

    def _batch_lines(self, batch: int) -> list[str]:
        db = self._connection()
        lines = []
        for row in db.execute(
            "SELECT r.request_id, r.query, r.session_id, r.user_id, r.served_at, r.stage, "
            "r.version, s.product_id, s.position, s.probability, s.clicked, s.purchased "
            "FROM requests r JOIN shown s ON s.request_id = r.request_id WHERE r.batch = ? "
            "ORDER BY r.served_at, r.request_id, s.position",
            (batch,),
        ):
            (rid, query, session, user, served_at, stage, version, pid, pos, prob, clk, buy) = row
            record: dict[str, Any] = {
                "query": query,
                "product_id": pid,
                "position": pos,
                "clicked": bool(clk),
                "purchased": bool(buy),
            }
            if session is not None:
                record["session_id"] = session
            if user is not None:
                record["user_id"] = user
            record["timestamp"] = _utc_iso(served_at)
            record["request_id"] = rid
            record["click_probability"] = prob
            record["stage"] = stage
            record["version"] = version
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        return lines

    def _write_batch(self, batch: int) -> int:
        db = self._connection()
        (name,) = db.execute("SELECT file FROM batches WHERE batch = ?", (batch,)).fetchone()
        path = self.folder / name
        lines = self._batch_lines(batch)
        created = not path.exists()
        with open(path, "a", encoding="utf-8") as handle:
            handle.write("".join(lines))
            handle.flush()
            os.fsync(handle.fileno())
        if created:
            fsync_dir(self.folder)
        with self._transaction() as tx:
            tx.execute("UPDATE batches SET done = 1 WHERE batch = ?", (batch,))
        return len(lines)

    def log_files(self) -> list[Path]:
        """The click-log files, oldest first."""

        def order(path: Path) -> tuple[str, int]:
            stem = path.name[len(LOG_PREFIX) : -len(".jsonl")]
            day, _, part = stem.partition(".")
            return day, int(part or 0)

        return sorted(self.folder.glob(f"{LOG_PREFIX}*.jsonl"), key=order)

    # -- monitoring --------------------------------------------------------------------

    def settled(self, requests: int) -> tuple[list[str], list[SettledImpression]]:
        """The last ``requests`` requests written to the click log (zero-result ones
        included) and their rows."""
        db = self._connection()
        ids = [
            r[0]
            for r in db.execute(
                "SELECT request_id FROM requests WHERE batch IS NOT NULL "
                "ORDER BY served_at DESC LIMIT ?",
                (requests,),
            )
        ]
        rows = db.execute(
            "SELECT s.request_id, s.position, s.probability, s.clicked FROM shown s "
            "JOIN (SELECT request_id FROM requests WHERE batch IS NOT NULL "
            "      ORDER BY served_at DESC LIMIT ?) r ON r.request_id = s.request_id",
            (requests,),
        ).fetchall()
        return ids, [SettledImpression(r[0], int(r[1]), r[2], bool(r[3])) for r in rows]

    def counts(self) -> dict[str, int]:
        db = self._connection()
        open_requests = db.execute("SELECT COUNT(*) FROM requests WHERE batch IS NULL").fetchone()[
            0
        ]
        total = db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
        clicks = db.execute("SELECT COUNT(*) FROM shown WHERE clicked = 1").fetchone()[0]
        return {"requests": total, "open_requests": open_requests, "clicks": clicks}
