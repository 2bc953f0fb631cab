"""Terminal rendering helpers: tables that line up with Chinese (double-width) text."""

from __future__ import annotations

import unicodedata
from typing import Sequence


def display_width(text: str) -> int:
    return sum(
        2 if unicodedata.east_asian_width(ch) in "WF" else 0 if unicodedata.combining(ch) else 1
        for ch in text
    )


def clip(text: str, width: int) -> str:
    """Cut ``text`` to at most ``width`` terminal columns, marking the cut with an ellipsis."""
    if display_width(text) <= width:
        return text
    out, used = [], 0
    for ch in text:
        w = display_width(ch)
        if used + w > width - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "…"


def pad(text: str, width: int, right: bool = False) -> str:
    gap = " " * max(0, width - display_width(text))
    return gap + text if right else text + gap


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right_align: Sequence[bool] | None = None
) -> str:
    right_align = right_align or [False] * len(headers)
    widths = [
        max([display_width(h)] + [display_width(r[i]) for r in rows]) for i, h in enumerate(headers)
    ]
    lines = [
        "  ".join(pad(h, w, r) for h, w, r in zip(headers, widths, right_align)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(pad(c, w, r) for c, w, r in zip(row, widths, right_align)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
