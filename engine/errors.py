"""Errors a user can act on. The CLI prints their message on one line and exits non-zero."""

from __future__ import annotations


class SearchError(Exception):
    """Base class for every error whose message is meant for the user, not a traceback."""


class DataError(SearchError, ValueError):
    """Bad input data. The message names the file, the line and the field when they are known."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        where = []
        if path is not None:
            where.append(str(path) + (f":{line}" if line is not None else ""))
        if field is not None:
            where.append(f"field '{field}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.path, self.line, self.field = path, line, field


class IndexLoadError(SearchError):
    """A missing, foreign, damaged or mismatched index folder."""


class ModelError(SearchError):
    """A model that cannot be found or loaded (e.g. offline and not cached)."""
