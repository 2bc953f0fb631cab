"""BM25 with rank-bm25's ``BM25Okapi`` scoring, computed eagerly into a sparse matrix.

Scoring (identical to rank-bm25 0.2.2 ``BM25Okapi``):

    idf(t)      = ln(N - n_t + 0.5) - ln(n_t + 0.5), floored at epsilon * mean(idf) when < 0
    score(q, d) = sum over query terms t (repeats counted) of
                  idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))

Like bm25s, every (term, document) contribution is computed once, when the index is built or
opened, into a CSR matrix of shape ``(n_terms, n_docs)``; a query then only sums the rows of its
terms, so its cost grows with the postings it touches, not with the catalogue size. What an
index stores is the raw term frequencies (``TermFrequencies``), not the contributions: idf and
the average length depend on the whole catalogue, which changes with every update, so they are
applied (``bm25_weights``) over all of an index's segments at once when it is opened.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np


@dataclass(frozen=True)
class BM25Params:
    k1: float = 1.5
    b: float = 0.75
    epsilon: float = 0.25


@dataclass(frozen=True)
class TermFrequencies:
    """Raw term frequencies of a collection: a CSR matrix of shape ``(n_terms, n_docs)``.

    The postings of term ``t`` (``terms[t]``) are ``doc_indices[indptr[t]:indptr[t + 1]]``,
    ascending, with counts ``tf`` at the same positions; ``doc_lengths[d]`` is the number of
    tokens of document ``d``. Unlike BM25 contributions these hold no collection statistic,
    so the frequencies of several collections (index segments) merge exactly.
    """

    terms: list[str]
    indptr: np.ndarray  # (n_terms + 1,) int64
    doc_indices: np.ndarray  # (nnz,) int32
    tf: np.ndarray  # (nnz,) int32
    doc_lengths: np.ndarray  # (n_docs,) int32

    @property
    def n_docs(self) -> int:
        return len(self.doc_lengths)

    def term_ids(self) -> np.ndarray:
        """The term of each posting, shape ``(nnz,)`` int64."""
        return np.repeat(np.arange(len(self.terms), dtype=np.int64), np.diff(self.indptr))

    @classmethod
    def from_tokens(cls, tokenized_docs: Sequence[Sequence[str]]) -> TermFrequencies:
        """Frequencies of tokenised documents; terms are numbered in order of first
        occurrence."""
        vocabulary: dict[str, int] = {}
        rows: list[int] = []
        cols: list[int] = []
        tfs: list[int] = []
        doc_len = np.zeros(len(tokenized_docs), dtype=np.int64)
        for d, tokens in enumerate(tokenized_docs):
            doc_len[d] = len(tokens)
            for term, tf in Counter(tokens).items():
                rows.append(vocabulary.setdefault(term, len(vocabulary)))
                cols.append(d)
                tfs.append(tf)
        return cls.from_postings(
            list(vocabulary),
            np.asarray(rows, dtype=np.int64),
            np.asarray(cols, dtype=np.int64),
            np.asarray(tfs, dtype=np.int64),
            doc_len,
        )

    @classmethod
    def from_postings(
        cls,
        terms: list[str],
        term_ids: np.ndarray,
        doc_ids: np.ndarray,
        tf: np.ndarray,
        doc_lengths: np.ndarray,
    ) -> TermFrequencies:
        """The CSR matrix of (term, document, count) triples given in any order, each
        (term, document) pair at most once."""
        order = np.lexsort((doc_ids, term_ids))
        indptr = np.zeros(len(terms) + 1, dtype=np.int64)
        np.cumsum(np.bincount(term_ids, minlength=len(terms)), out=indptr[1:])
        return cls(
            terms,
            indptr,
            np.asarray(doc_ids)[order].astype(np.int32),
            np.asarray(tf)[order].astype(np.int32),
            np.asarray(doc_lengths).astype(np.int32),
        )

    @classmethod
    def merge(
        cls, parts: Sequence[tuple[TermFrequencies, np.ndarray]], n_docs: int
    ) -> TermFrequencies:
        """One collection of ``n_docs`` documents from several: ``parts`` pairs each
        collection with the new number of each of its documents (``-1``: dropped). Terms left
        with no document are dropped, so the result is what ``from_tokens`` gives for the
        surviving documents in their new order (up to the numbering of terms)."""
        vocabulary: dict[str, int] = {}
        term_ids, doc_ids, tfs = [], [], []
        doc_len = np.zeros(n_docs, dtype=np.int64)
        for freqs, new_row in parts:
            new_row = np.asarray(new_row, dtype=np.int64)
            if len(new_row) != freqs.n_docs:
                raise ValueError(
                    f"{len(new_row)} new rows given for a collection of {freqs.n_docs} documents"
                )
            term_map = np.array(
                [vocabulary.setdefault(t, len(vocabulary)) for t in freqs.terms], dtype=np.int64
            )
            docs = new_row[freqs.doc_indices]
            keep = docs >= 0
            term_ids.append(term_map[freqs.term_ids()[keep]])
            doc_ids.append(docs[keep])
            tfs.append(freqs.tf[keep])
            live = new_row >= 0
            doc_len[new_row[live]] = freqs.doc_lengths[live]
        t = np.concatenate(term_ids) if term_ids else np.zeros(0, dtype=np.int64)
        present = np.bincount(t, minlength=len(vocabulary)) > 0
        renumber = np.cumsum(present) - 1
        terms = [term for term, i in vocabulary.items() if present[i]]
        return cls.from_postings(
            terms,
            renumber[t],
            np.concatenate(doc_ids) if doc_ids else np.zeros(0, dtype=np.int64),
            np.concatenate(tfs) if tfs else np.zeros(0, dtype=np.int64),
            doc_len,
        )


@dataclass(frozen=True)
class CollectionStats:
    """The collection statistics BM25 applies to every document: the number of documents, their
    total length in tokens and each term's document frequency. The statistics of a whole
    catalogue, given to each part of it (a shard of a sharded index), make the part's scores
    equal the whole catalogue's: they are all that ``bm25_weights`` takes from outside a
    document. Parts' statistics add up (``merge``)."""

    n_docs: int
    total_length: int
    doc_freq: dict[str, int]

    @classmethod
    def of(cls, freqs: TermFrequencies) -> CollectionStats:
        return cls(
            freqs.n_docs,
            int(freqs.doc_lengths.sum(dtype=np.int64)),
            dict(zip(freqs.terms, np.diff(freqs.indptr).tolist())),
        )

    @classmethod
    def merge(cls, parts: Iterable[CollectionStats]) -> CollectionStats:
        n_docs = total = 0
        doc_freq: dict[str, int] = {}
        for part in parts:
            n_docs += part.n_docs
            total += part.total_length
            for term, df in part.doc_freq.items():
                doc_freq[term] = doc_freq.get(term, 0) + df
        return cls(n_docs, total, doc_freq)

    def idf_floor(self, epsilon: float) -> float:
        """epsilon * mean idf over every term of the collection (rank-bm25's floor)."""
        return _idf_floor(_idf(self.n_docs, np.fromiter(self.doc_freq.values(), float)), epsilon)


def _idf(n_docs: int, doc_freq: np.ndarray) -> np.ndarray:
    doc_freq = np.asarray(doc_freq, dtype=np.float64)
    return np.log(n_docs - doc_freq + 0.5) - np.log(doc_freq + 0.5)


def _idf_floor(idf: np.ndarray, epsilon: float) -> float:
    # An exactly rounded sum (math.fsum), so it does not depend on the order of the terms.
    return epsilon * math.fsum(idf.tolist()) / len(idf) if len(idf) else 0.0


def bm25_weights(
    freqs: TermFrequencies, params: BM25Params, stats: CollectionStats | None = None
) -> np.ndarray:
    """The BM25 contribution of every posting of ``freqs``, shape ``(nnz,)`` float32 (computed
    in float64). The one implementation of the formula: a build, an index loaded from
    segments and a shard of a sharded index all call it, with the statistics of the whole
    collection (N, average length, document frequencies): ``freqs``' own, or ``stats`` when
    ``freqs`` is one part of a larger collection. The idf floor's mean is an exactly rounded
    sum, so it does not depend on the order in which terms are numbered."""
    term_ids = freqs.term_ids()
    tf = freqs.tf.astype(np.float64)
    doc_len = freqs.doc_lengths.astype(np.float64)
    if stats is None:
        n_docs, total = freqs.n_docs, int(freqs.doc_lengths.sum(dtype=np.int64))
        idf = _idf(n_docs, np.diff(freqs.indptr))
        floor = _idf_floor(idf, params.epsilon)
    else:
        missing = [t for t in freqs.terms if t not in stats.doc_freq]
        if missing:
            raise ValueError(
                f"the collection statistics lack {len(missing)} of this part's terms "
                f"(e.g. {missing[0]!r}); they are not the statistics of a collection holding it"
            )
        n_docs, total = stats.n_docs, stats.total_length
        idf = _idf(n_docs, np.array([stats.doc_freq[t] for t in freqs.terms], dtype=np.float64))
        floor = stats.idf_floor(params.epsilon)
    # rank-bm25 averages *before* flooring and floors only strictly negative values.
    idf = np.where(idf < 0, floor, idf)
    # The total of integer lengths is exact, so this is the mean of the lengths, rounded once.
    avgdl = total / n_docs
    norm = params.k1 * (1 - params.b + params.b * doc_len[freqs.doc_indices] / avgdl)
    contrib = idf[term_ids] * tf * (params.k1 + 1) / (tf + norm)
    return contrib.astype(np.float32)


class BM25Index:
    """Term-by-document BM25 contributions. Documents are addressed by their row number."""

    def __init__(
        self,
        vocabulary: dict[str, int],
        indptr: np.ndarray,
        doc_indices: np.ndarray,
        contributions: np.ndarray,
        n_docs: int,
        params: BM25Params,
    ) -> None:
        self.vocabulary = vocabulary
        self.indptr = indptr
        self.doc_indices = doc_indices
        self.contributions = contributions
        self.n_docs = n_docs
        self.params = params

    @classmethod
    def build(
        cls, tokenized_docs: Sequence[Sequence[str]], params: BM25Params = BM25Params()
    ) -> BM25Index:
        if len(tokenized_docs) == 0:
            raise ValueError("cannot build BM25 over an empty collection")
        return cls.from_frequencies(TermFrequencies.from_tokens(tokenized_docs), params)

    @classmethod
    def from_frequencies(
        cls,
        freqs: TermFrequencies,
        params: BM25Params = BM25Params(),
        stats: CollectionStats | None = None,
    ) -> BM25Index:
        """BM25 over a collection given as raw term frequencies; ``stats``: the statistics of
        the whole collection when ``freqs`` is one part of it (default: ``freqs``' own)."""
        if freqs.n_docs == 0:
            raise ValueError("cannot build BM25 over an empty collection")
        return cls(
            {term: i for i, term in enumerate(freqs.terms)},
            freqs.indptr,
            freqs.doc_indices,
            bm25_weights(freqs, params, stats),
            freqs.n_docs,
            params,
        )

    def known_terms(self, terms: Iterable[str]) -> list[str]:
        return [t for t in terms if t in self.vocabulary]

    def score(self, terms: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Scores of every document, shape ``(n_docs,)`` float32, and a boolean mask of the
        documents that contain at least one query term (a zero score alone cannot tell)."""
        scores = np.zeros(self.n_docs, dtype=np.float32)
        matched = np.zeros(self.n_docs, dtype=bool)
        for term, count in Counter(terms).items():
            row = self.vocabulary.get(term)
            if row is None:
                continue
            start, end = self.indptr[row], self.indptr[row + 1]
            docs = self.doc_indices[start:end]
            # Each document appears once per row, so fancy-index addition is safe here.
            scores[docs] += count * self.contributions[start:end]
            matched[docs] = True
        return scores, matched

    def top_k(
        self, terms: Sequence[str], k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Row numbers and scores of the best ``k`` matching documents, best first; ties by row
        number (rows are in product-id order, so ties break by id)."""
        scores, matched = self.score(terms)
        if allowed is not None:
            matched &= allowed
        candidates = np.flatnonzero(matched)
        if len(candidates) > k:
            cand_scores = scores[candidates]
            # Partition on the k-th score, then keep everything tied with it so the final
            # (score, row) sort decides ties deterministically.
            kth = np.partition(cand_scores, len(cand_scores) - k)[len(cand_scores) - k]
            candidates = candidates[cand_scores >= kth]
        order = np.lexsort((candidates, -scores[candidates]))[:k]
        rows = candidates[order]
        return rows, scores[rows]

    def params_dict(self) -> dict[str, float]:
        return asdict(self.params)


def backoff_terms(
    terms: Sequence[str], vocabulary: dict[str, int], max_piece: int = 6
) -> list[str]:
    """Replace query terms the index has never seen by in-vocabulary pieces of them.

    jieba may keep a query word whole (e.g. 碎花裙) that the catalogue only has in parts
    (碎花, 裙). Such a term is split greedily into the longest pieces found in the vocabulary,
    so a Chinese query never scores zero merely because of segmentation. Known terms and
    terms with no known piece are returned as they are.
    """
    out: list[str] = []
    for term in terms:
        if term in vocabulary or len(term) < 2:
            out.append(term)
            continue
        pieces: list[str] = []
        start = 0
        while start < len(term):
            for end in range(min(len(term), start + max_piece), start, -1):
                if term[start:end] in vocabulary:
                    pieces.append(term[start:end])
                    start = end
                    break
            else:
                start += 1
        out.extend(pieces or [term])
    return out
