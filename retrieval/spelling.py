"""Spelling correction of query terms against an index's own vocabulary (SymSpell-style).

The dictionary is the BM25 vocabulary with each term's document frequency: what the catalogue
actually says, in the analysed form (stemmed English), so a correction always names a term that
matches products. Lookup is the symmetric-delete method of SymSpell (Garbe, 2012): every
dictionary term is indexed under the strings made by deleting up to ``max_distance`` of its
characters; a query term's own deletes are looked up there, and each candidate found is checked
with the true (optimal string alignment) Damerau-Levenshtein distance. The best candidate has
the smallest distance, then the highest document frequency, then comes first alphabetically.

What is corrected, so that a correction never loses recall:

- only terms the vocabulary does not hold (or holds in fewer than ``rare`` documents while a
  candidate is ``ratio`` times more frequent), of at least ``min_length`` letters, purely
  alphabetic ASCII (no numbers, sizes or model codes, no Chinese: jieba's back-off handles
  Chinese);
- the original term is kept beside its correction (the query matches either), so a term that
  was right after all still matches what it matched.

The index is built from the vocabulary when an engine opens an index with spelling on (a few
tenths of a second for 30,000 terms) and is not stored: it is a pure function of the stored
BM25 vocabulary and frequencies, which are plain ``.npy`` and JSON already.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

_ALPHA = re.compile(r"^[a-z]+$")


def deletes(term: str, distance: int) -> set[str]:
    """Every string made by deleting at most ``distance`` characters of ``term`` (``term``
    itself included)."""
    found = {term}
    frontier = {term}
    for _ in range(distance):
        frontier = {w[:i] + w[i + 1 :] for w in frontier for i in range(len(w))} - found
        found |= frontier
    return found


def edit_distance(a: str, b: str, limit: int) -> int:
    """Optimal string alignment distance (insert, delete, substitute, swap adjacent), or
    ``limit + 1`` once it is certain to exceed ``limit``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], previous2[j - 2] + 1)
        if min(current) > limit:
            return limit + 1
        previous2, previous = previous, current
    return previous[-1]


@dataclass(frozen=True)
class Correction:
    """``term`` (a query term) corrected to ``suggestion`` at ``distance`` edits."""

    term: str
    suggestion: str
    distance: int

    def to_dict(self) -> dict[str, object]:
        return {"term": self.term, "suggestion": self.suggestion, "distance": self.distance}


class SpellingCorrector:
    """Symmetric-delete lookup over ``frequencies`` (term -> document frequency).

    ``max_distance`` is the most edits a correction may make (2; 1 for terms shorter than
    ``long_term`` letters); dictionary terms shorter than ``min_length`` are never suggested.
    """

    def __init__(
        self,
        frequencies: Mapping[str, int],
        *,
        max_distance: int = 2,
        min_length: int = 4,
        long_term: int = 8,
        rare: int = 1,
        ratio: float = 20.0,
    ) -> None:
        if max_distance < 1:
            raise ValueError(f"max_distance must be >= 1, got {max_distance}")
        self.frequencies = dict(frequencies)
        self.max_distance = max_distance
        self.min_length = min_length
        self.long_term = long_term
        self.rare = rare
        self.ratio = ratio
        self._deletes: dict[str, list[str]] = {}
        for term in self.frequencies:
            if len(term) >= min_length and _ALPHA.match(term):
                for key in deletes(term, max_distance):
                    self._deletes.setdefault(key, []).append(term)

    @classmethod
    def from_vocabulary(
        cls, terms: Sequence[str], document_frequencies: Iterable[int], **options: int | float
    ) -> SpellingCorrector:
        return cls(dict(zip(terms, (int(f) for f in document_frequencies))), **options)  # type: ignore[arg-type]

    @classmethod
    def for_bm25(cls, bm25: Any, **options: Any) -> SpellingCorrector:
        """Over a ``BM25Index``'s vocabulary and document frequencies."""
        frequencies = np.diff(bm25.indptr)
        return cls({t: int(frequencies[row]) for t, row in bm25.vocabulary.items()}, **options)

    def _limit(self, term: str) -> int:
        return self.max_distance if len(term) >= self.long_term else min(1, self.max_distance)

    def needs_correction(self, term: str) -> bool:
        """Whether ``term`` is a candidate for correction at all (see the module docstring)."""
        if len(term) < self.min_length or not _ALPHA.match(term):
            return False
        return self.frequencies.get(term, 0) < self.rare or term not in self.frequencies

    def suggest(self, term: str) -> Correction | None:
        """The best in-vocabulary correction of ``term``, or None."""
        known = self.frequencies.get(term, 0)
        if known >= self.rare and term in self.frequencies:
            return None
        if len(term) < self.min_length or not _ALPHA.match(term):
            return None
        limit = self._limit(term)
        best: tuple[int, int, str] | None = None
        for key in deletes(term, limit):
            for candidate in self._deletes.get(key, ()):
                if candidate == term:
                    continue
                distance = edit_distance(term, candidate, limit)
                if distance > limit:
                    continue
                rank = (distance, -self.frequencies[candidate], candidate)
                if best is None or rank < best:
                    best = rank
        if best is None:
            return None
        distance, neg_freq, suggestion = best
        if known and -neg_freq < known * self.ratio:
            return None
        return Correction(term, suggestion, distance)

    def correct(self, terms: Sequence[str]) -> tuple[list[str], list[Correction]]:
        """``terms`` with each correction added right after the term it corrects (the
        original stays), and the corrections made."""
        out: list[str] = []
        made: list[Correction] = []
        for term in terms:
            out.append(term)
            correction = self.suggest(term)
            if correction is not None:
                out.append(correction.suggestion)
                made.append(correction)
        return out, made
