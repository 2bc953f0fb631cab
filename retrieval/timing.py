"""Timing the steps of a search into an optional ``Timings`` dict (see ``retrieval.base``)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def timed(timings: dict[str, float] | None, step: str) -> Iterator[None]:
    """Add the block's wall time in ms to ``timings[step]``; a no-op when ``timings`` is None."""
    if timings is None:
        yield
        return
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[step] = timings.get(step, 0.0) + (time.perf_counter() - started) * 1000.0
