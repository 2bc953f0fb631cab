"""Click logs: one impression (a product shown for a query at a rank) per JSONL line.

Format (UTF-8 JSONL, one object per line; blank lines are skipped)::

    {"query": "cordless drill", "product_id": "100001", "position": 1, "clicked": 1,
     "purchased": 0, "session_id": "s42", "user_id": "u7", "timestamp": "2024-01-01T10:00:00Z"}

- ``query``: the query text as typed (non-empty string).
- ``product_id``: the product shown (string; an integer is accepted and turned into a string).
- ``position``: the 1-based rank at which the product was shown (positive integer below 2**63).
- ``clicked``: ``0``/``1`` or ``false``/``true``.
- optional ``purchased`` (same type as ``clicked``, default false; a purchase implies a click),
  ``session_id`` and ``user_id`` (string or integer), ``timestamp`` (string, e.g. ISO 8601, or a
  number such as Unix seconds; kept as a string). ``null`` means absent. Unknown fields are ignored.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shopsearch.errors import DataError

logger = logging.getLogger(__name__)

_REQUIRED = ("query", "product_id", "position", "clicked")
_TEXT_FIELDS = ("query", "product_id", "session_id", "user_id", "timestamp")
# A JSON escape such as "\ud800" decodes to a lone surrogate, which no UTF-8 file can store.
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Impression:
    """One product shown to a user for a query. ``position`` is the 1-based rank shown."""

    query: str
    product_id: str
    position: int
    clicked: bool
    purchased: bool = False
    session_id: str | None = None
    user_id: str | None = None
    timestamp: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSONL record; optional fields that are ``None`` are left out."""
        out: dict[str, Any] = {
            "query": self.query,
            "product_id": self.product_id,
            "position": self.position,
            "clicked": bool(self.clicked),
            "purchased": bool(self.purchased),
        }
        for name in ("session_id", "user_id", "timestamp"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


def _flag(value: Any, name: str, where: dict[str, Any]) -> bool:
    # bool is a subclass of int, so test it first; floats such as 0.5 are rejected on purpose.
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise DataError(f"must be 0, 1, true or false, got {value!r}", field=name, **where)


def _optional_id(value: Any, name: str, where: dict[str, Any]) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"must be a string or an integer, got {value!r}", field=name, **where)


def _parse_record(obj: Any, where: dict[str, Any]) -> Impression:
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}", **where)
    for name in _REQUIRED:
        if name not in obj or obj[name] is None:
            raise DataError("missing required field", field=name, **where)

    query = obj["query"]
    if not isinstance(query, str):
        raise DataError(f"must be a string, got {query!r}", field="query", **where)
    if not query.strip():
        raise DataError("empty query", field="query", **where)

    product_id = _optional_id(obj["product_id"], "product_id", where)
    if not product_id or not product_id.strip():
        raise DataError("empty product id", field="product_id", **where)

    position = obj["position"]
    # Positions become numpy int64 (propensities), hence the upper bound.
    if isinstance(position, bool) or not isinstance(position, int) or not 1 <= position < 2**63:
        raise DataError(
            f"must be a positive integer (1 = top) below 2**63, got {position!r}",
            field="position",
            **where,
        )

    clicked = _flag(obj["clicked"], "clicked", where)
    purchased = False
    if obj.get("purchased") is not None:
        purchased = _flag(obj["purchased"], "purchased", where)
    if purchased and not clicked:
        raise DataError(
            "purchased is true but clicked is false; a purchase implies a click",
            field="purchased",
            **where,
        )

    timestamp = obj.get("timestamp")
    if timestamp is not None:
        if isinstance(timestamp, bool) or not isinstance(timestamp, (str, int, float)):
            raise DataError(
                f"must be a string or a number, got {timestamp!r}", field="timestamp", **where
            )
        timestamp = str(timestamp)

    impression = Impression(
        query=query,
        product_id=product_id,
        position=position,
        clicked=clicked,
        purchased=purchased,
        session_id=_optional_id(obj.get("session_id"), "session_id", where),
        user_id=_optional_id(obj.get("user_id"), "user_id", where),
        timestamp=timestamp,
    )
    for name in _TEXT_FIELDS:
        bad = _SURROGATE.search(getattr(impression, name) or "")
        if bad:
            raise DataError(
                f"{bad.group()!r} is half of a UTF-16 pair (a broken \\u escape), not text",
                field=name,
                **where,
            )
    return impression


def read_click_log(path: str | os.PathLike[str]) -> list[Impression]:
    """Read and validate a JSONL click log, in file order.

    Raises ``DataError`` naming ``file:line`` and the field for the first bad line (malformed
    JSON, missing field, empty query, non-positive position, ``clicked`` not 0/1/bool, ...), and
    for a missing file or a file without any impression.
    """
    p = Path(path)
    try:
        handle = p.open("rb")
    except FileNotFoundError:
        raise DataError("click log not found", path=str(p)) from None
    except IsADirectoryError:
        raise DataError("expected a JSONL file, got a directory", path=str(p)) from None

    impressions: list[Impression] = []
    with handle:
        # Decode line by line so that a bad byte is reported with its line number.
        for lineno, raw in enumerate(handle, start=1):
            where: dict[str, Any] = {"path": str(p), "line": lineno}
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                raise DataError("not valid UTF-8", **where) from None
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"malformed JSON ({exc.msg}, column {exc.colno})", **where
                ) from None
            except (ValueError, RecursionError) as exc:
                # json.loads raises these for an integer of over 4300 digits and deep nesting.
                what = "nested too deep" if isinstance(exc, RecursionError) else "number too long"
                raise DataError(f"malformed JSON ({what})", **where) from None
            impressions.append(_parse_record(obj, where))

    if not impressions:
        raise DataError("click log has no impressions", path=str(p))
    logger.info("read %d impressions from %s", len(impressions), p)
    return impressions


def write_click_log(impressions: Iterable[Impression], path: str | os.PathLike[str]) -> None:
    """Write impressions as UTF-8 JSONL (``ensure_ascii=False``), one per line.

    The file is written next to its destination and renamed into place, so a reader never sees
    half a log. Parent folders are created.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            for imp in impressions:
                out.write(json.dumps(imp.to_dict(), ensure_ascii=False) + "\n")
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def click_labels(
    impressions: Sequence[Impression], *, aggregate: bool = False
) -> list[tuple[str, str, float, int]]:
    """Pointwise click labels ``(query, product_id, label, position)``.

    With ``aggregate=False`` there is one row per impression, in input order, ``label`` being
    1.0 for a click and 0.0 otherwise. With ``aggregate=True`` impressions of the same
    ``(query, product_id, position)`` are merged and ``label`` is their click-through rate;
    rows are sorted by ``(query, product_id, position)``. These labels are *biased* by position;
    see ``shopsearch.training.propensity`` for debiased targets.
    """
    if not aggregate:
        return [(i.query, i.product_id, float(i.clicked), i.position) for i in impressions]
    counts: dict[tuple[str, str, int], list[int]] = {}
    for i in impressions:
        c = counts.setdefault((i.query, i.product_id, i.position), [0, 0])
        c[0] += int(i.clicked)
        c[1] += 1
    return [
        (q, pid, clicks / shown, pos) for (q, pid, pos), (clicks, shown) in sorted(counts.items())
    ]


def clicked_as_judgements(
    impressions: Sequence[Impression],
) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """A click log as judged queries: each distinct query text gets an id (``c0``, ``c1``, ...
    in text order) and every product clicked for it grade 1, so that the bi-encoder trainer
    can read a log like graded judgements. Queries without a click get no judgements."""
    texts = sorted({i.query for i in impressions})
    queries = {f"c{n}": text for n, text in enumerate(texts)}
    id_of = {text: qid for qid, text in queries.items()}
    qrels: dict[str, dict[str, int]] = {}
    for imp in impressions:
        if imp.clicked:
            qrels.setdefault(id_of[imp.query], {})[imp.product_id] = 1
    return queries, qrels
