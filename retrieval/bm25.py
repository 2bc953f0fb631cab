"""BM25 with rank-bm25's ``BM25Okapi`` scoring, computed eagerly into a sparse matrix.

Scoring (identical to rank-bm25 0.2.2 ``BM25Okapi``):

    idf(t)      = ln(N - n_t + 0.5) - ln(n_t + 0.5), floored at epsilon * mean(idf) when < 0
    score(q, d) = sum over query terms t (repeats counted) of
                  idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))

Like bm25s, every (term, document) contribution is computed once at index time and stored in a
CSR matrix of shape ``(n_terms, n_docs)``; a query then only sums the rows of its terms, so its
cost grows with the postings it touches, not with the catalogue size.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np


@dataclass(frozen=True)
class BM25Params:
    k1: float = 1.5
    b: float = 0.75
    epsilon: float = 0.25


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
        n_docs = len(tokenized_docs)
        if n_docs == 0:
            raise ValueError("cannot build BM25 over an empty collection")
        vocabulary: dict[str, int] = {}
        rows: list[int] = []
        cols: list[int] = []
        tfs: list[int] = []
        doc_len = np.zeros(n_docs, dtype=np.float64)
        for d, tokens in enumerate(tokenized_docs):
            doc_len[d] = len(tokens)
            for term, tf in Counter(tokens).items():
                rows.append(vocabulary.setdefault(term, len(vocabulary)))
                cols.append(d)
                tfs.append(tf)
        row_arr = np.asarray(rows, dtype=np.int64)
        col_arr = np.asarray(cols, dtype=np.int64)
        tf_arr = np.asarray(tfs, dtype=np.float64)

        doc_freq = np.bincount(row_arr, minlength=len(vocabulary)).astype(np.float64)
        idf = np.log(n_docs - doc_freq + 0.5) - np.log(doc_freq + 0.5)
        # rank-bm25 averages *before* flooring and floors only strictly negative values.
        floor = params.epsilon * idf.mean() if len(idf) else 0.0
        idf = np.where(idf < 0, floor, idf)

        avgdl = doc_len.mean()
        norm = params.k1 * (1 - params.b + params.b * doc_len[col_arr] / avgdl)
        contrib = idf[row_arr] * tf_arr * (params.k1 + 1) / (tf_arr + norm)

        order = np.lexsort((col_arr, row_arr))
        indptr = np.zeros(len(vocabulary) + 1, dtype=np.int64)
        np.cumsum(np.bincount(row_arr, minlength=len(vocabulary)), out=indptr[1:])
        return cls(
            vocabulary,
            indptr,
            col_arr[order].astype(np.int32),
            contrib[order].astype(np.float32),
            n_docs,
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

    # Persistence helpers: plain arrays, saved by index/ as .npy and JSON.
    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "indptr": self.indptr,
            "doc_indices": self.doc_indices,
            "contributions": self.contributions,
        }

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
