"""Cross-encoder inputs from token ids tokenised once per product, not once per query.

A rerank of 30 candidates used to tokenise 30 (query, title) pairs per query; the titles are
the same every time. ``PairTokenizer`` tokenises each product text once (the model's own fast
tokenizer, without special tokens), the query once per search, and assembles each pair with
:func:`pair_ids`: the tokenizer's own pair template (``[CLS] q [SEP] p [SEP]`` for BERT,
``<s> q </s></s> p </s>`` for XLM-R, read off the tokenizer) after the tokenizer's own
``longest_first`` truncation. ``tests/rerank/test_pair_inputs.py`` checks the result equals
``tokenizer(query, text, truncation="longest_first", max_length=...)`` id for id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


@dataclass(frozen=True)
class PairTemplate:
    """The special tokens around a pair: ``prefix a middle b suffix``, with their type ids."""

    prefix: tuple[int, ...]
    middle: tuple[int, ...]
    suffix: tuple[int, ...]
    prefix_types: tuple[int, ...]
    middle_types: tuple[int, ...]
    suffix_types: tuple[int, ...]
    first_type: int
    second_type: int

    @property
    def added(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)


def truncated_lengths(n_first: int, n_second: int, budget: int) -> tuple[int, int]:
    """Lengths after ``longest_first`` truncation to ``budget`` tokens in all, as the
    ``tokenizers`` library computes them (utils/truncation.rs): the shorter side is kept whole
    when it fits in half, else both get half (the second the odd token)."""
    if n_first + n_second <= budget:
        return n_first, n_second
    swap = n_first > n_second
    n1, n2 = (n_second, n_first) if swap else (n_first, n_second)
    n2 = n1 if n1 > budget else max(n1, budget - n1)
    if n1 + n2 > budget:
        n1 = budget // 2
        n2 = n1 + budget % 2
    return (n2, n1) if swap else (n1, n2)


def pair_ids(
    first: Sequence[int], second: Sequence[int], template: PairTemplate, max_length: int
) -> tuple[list[int], list[int]]:
    """Input ids and token type ids of one pair, truncated to ``max_length`` in all."""
    n1, n2 = truncated_lengths(len(first), len(second), max(0, max_length - template.added))
    ids = [*template.prefix, *first[:n1], *template.middle, *second[:n2], *template.suffix]
    types = [
        *template.prefix_types,
        *[template.first_type] * n1,
        *template.middle_types,
        *[template.second_type] * n2,
        *template.suffix_types,
    ]
    return ids, types


def read_template(backend: Any) -> PairTemplate:
    """The pair template of a ``tokenizers.Tokenizer`` (no padding or truncation set),
    read by post-processing two one-token sequences."""
    a = backend.encode("a", add_special_tokens=False)
    b = backend.encode("b", add_special_tokens=False)
    if len(a.ids) != 1 or len(b.ids) != 1:
        raise ValueError("cannot read the pair template: 'a' or 'b' is not one token")
    pair = backend.post_process(a, b)
    ids, types = pair.ids, pair.type_ids
    i, j = ids.index(a.ids[0]), len(ids) - 1 - ids[::-1].index(b.ids[0])
    return PairTemplate(
        prefix=tuple(ids[:i]),
        middle=tuple(ids[i + 1 : j]),
        suffix=tuple(ids[j + 1 :]),
        prefix_types=tuple(types[:i]),
        middle_types=tuple(types[i + 1 : j]),
        suffix_types=tuple(types[j + 1 :]),
        first_type=types[i],
        second_type=types[j],
    )


class PairTokenizer:
    """Batches of pair inputs (numpy, padded to the batch's longest) for a model folder's
    fast tokenizer, with every text's ids cached after its first use."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        backend = tokenizer.backend_tokenizer
        # A copy: the folder's tokenizer.json may ask for padding to 128 and truncation,
        # which would pad every cached title; the pair is assembled (and cut) here instead.
        from tokenizers import Tokenizer

        self._backend = Tokenizer.from_str(backend.to_str())
        self._backend.no_padding()
        self._backend.no_truncation()
        self.template = read_template(self._backend)
        self.max_length = max_length
        self.pad_id = int(tokenizer.pad_token_id or 0)
        self.input_names = list(tokenizer.model_input_names)
        self._ids: dict[str, list[int]] = {}

    def pretokenize(self, texts: Sequence[str]) -> None:
        """Tokenise (and keep) the ids of texts not seen yet, in one batch."""
        new = [t for t in dict.fromkeys(texts) if t not in self._ids]
        for text, encoding in zip(new, self._backend.encode_batch(new, add_special_tokens=False)):
            self._ids[text] = encoding.ids

    def ids(self, text: str) -> list[int]:
        if text not in self._ids:
            self._ids[text] = self._backend.encode(text, add_special_tokens=False).ids
        return self._ids[text]

    def batch(self, pairs: Sequence[tuple[str, str]]) -> dict[str, np.ndarray]:
        # Queries are tokenised once per batch and not kept (there is no end to them);
        # product texts are kept (there are as many as the catalogue has).
        queries = {q: self._backend.encode(q, add_special_tokens=False).ids for q, _ in pairs}
        rows = [pair_ids(queries[q], self.ids(t), self.template, self.max_length) for q, t in pairs]
        width = max(len(ids) for ids, _ in rows)
        input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        types = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for row, (ids, type_ids) in enumerate(rows):
            input_ids[row, : len(ids)] = ids
            types[row, : len(ids)] = type_ids
            mask[row, : len(ids)] = 1
        feeds = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": types}
        return {name: feeds[name] for name in self.input_names}
