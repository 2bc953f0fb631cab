"""Building an index folder atomically and loading one safely.

Layout of an index folder (plain formats, no pickle):

    manifest.json               what is here and how it was made (see index/manifest.py)
    products.jsonl              the catalogue, sorted by id; row i is FAISS id i / BM25 doc i
    bm25_vocabulary.json        term -> row of the BM25 matrix
    bm25_indptr.npy, bm25_doc_indices.npy, bm25_contributions.npy   CSR term x document matrix
    dense.faiss                 FAISS index (inner product on normalised vectors), if dense
    reranker/                   optional fine-tuned cross-encoder (+ calibration.json)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from shopsearch.errors import IndexLoadError, SearchError
from shopsearch.files import replace_folder
from shopsearch.index.catalog import catalog_hash, read_products, record_to_product, write_products
from shopsearch.index.manifest import MANIFEST_FILE, Manifest, check_files, file_record
from shopsearch.retrieval.analysis import Analyzer
from shopsearch.retrieval.base import Encoder
from shopsearch.retrieval.bm25 import BM25Index, BM25Params
from shopsearch.retrieval.dense import build_faiss_index, choose_factory
from shopsearch.retrieval.filters import FilterIndex
from shopsearch.retrieval.fusion import FusionConfig
from shopsearch.retrieval.hybrid import DEFAULT_DEPTH
from shopsearch.retrieval.types import Product

logger = logging.getLogger(__name__)

PRODUCTS_FILE = "products.jsonl"
FAISS_FILE = "dense.faiss"
RERANKER_DIR = "reranker"
_BM25_ARRAYS = ("indptr", "doc_indices", "contributions")


@dataclass
class BuildSummary:
    path: Path
    products: int
    seconds: float
    bytes_on_disk: int
    encode_seconds: float = 0.0
    texts_per_second: float = 0.0
    factory: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": str(self.path),
            "products": self.products,
            "seconds": round(self.seconds, 2),
            "bytes_on_disk": self.bytes_on_disk,
            "encode_seconds": round(self.encode_seconds, 2),
            "texts_per_second": round(self.texts_per_second, 1),
            "faiss_factory": self.factory,
        }


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build_index(
    products: list[Product],
    target: Path,
    *,
    encoder: Encoder | None,
    analyzer: Analyzer | None = None,
    bm25_params: BM25Params = BM25Params(),
    factory: str | None = None,
    fusion: FusionConfig = FusionConfig(),
    batch_size: int = 64,
    show_progress: bool = False,
    source: str = "",
    copy_reranker_from: Path | None = None,
    reranker_record: Mapping[str, Any] | None = None,
    candidate_depth: int = DEFAULT_DEPTH,
    on_stage: Callable[[str], None] | None = None,
) -> BuildSummary:
    """Build a complete index of ``products`` into ``target`` (replacing an index there).

    Everything is written into a temporary sibling folder first and renamed into place.
    ``copy_reranker_from`` stores a fine-tuned reranker folder in the index; a rebuild passes
    the old manifest's ``reranker_record`` with it, so that what was tuned for that reranker
    (its blend) survives.
    """
    if not products:
        raise SearchError("cannot build an index of an empty catalogue")
    target = Path(target).resolve()
    if target.exists() and not target.is_dir():
        raise SearchError(f"{target} exists and is not a folder")
    if target.exists() and not (target / MANIFEST_FILE).is_file() and any(target.iterdir()):
        raise SearchError(
            f"{target} exists and is not a shopsearch index; refusing to "
            f"overwrite it (choose another --index folder)"
        )
    analyzer = analyzer or Analyzer()
    notify = on_stage or (lambda _msg: None)
    started = time.perf_counter()
    products = sorted(products, key=lambda p: p.id)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write_products(products, tmp / PRODUCTS_FILE)
        texts = [p.text() for p in products]

        notify("BM25: analysing text")
        bm25 = BM25Index.build(analyzer.tokenize_many(texts), bm25_params)
        (tmp / "bm25_vocabulary.json").write_text(
            json.dumps(bm25.vocabulary, ensure_ascii=False), encoding="utf-8"
        )
        for name, array in bm25.to_arrays().items():
            np.save(tmp / f"bm25_{name}.npy", array, allow_pickle=False)

        encoder_info = faiss_info = None
        encode_seconds = 0.0
        if encoder is not None:
            import faiss

            notify(f"dense: encoding {len(texts)} products with {encoder.name}")
            t0 = time.perf_counter()
            vectors = encoder.encode_documents(
                texts, batch_size=batch_size, show_progress=show_progress
            )
            encode_seconds = time.perf_counter() - t0
            factory = factory or choose_factory(len(products))
            notify(f"dense: building FAISS index {factory!r}")
            faiss.write_index(build_faiss_index(vectors, factory), str(tmp / FAISS_FILE))
            describe = getattr(encoder, "describe", None)
            encoder_info = describe() if describe else {"name": encoder.name, "dim": encoder.dim}
            faiss_info = {"factory": factory, "metric": "inner_product", "ntotal": len(vectors)}

        reranker_info = None
        if copy_reranker_from is not None and (copy_reranker_from / "config.json").exists():
            shutil.copytree(copy_reranker_from, tmp / RERANKER_DIR)
            reranker_info = {**_reranker_info(tmp / RERANKER_DIR), **(reranker_record or {})}

        files = {p.name: file_record(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = Manifest(
            products=len(products),
            catalog_sha256=catalog_hash(products),
            analyzer=analyzer.config(),
            bm25={**bm25.params_dict(), "vocabulary_size": len(bm25.vocabulary)},
            encoder=encoder_info,
            faiss=faiss_info,
            fusion=fusion.to_dict(),
            files=files,
            reranker=reranker_info,
            catalog_source=source,
            candidate_depth=candidate_depth,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        manifest.write(tmp)
        replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    n = len(products)
    return BuildSummary(
        path=target,
        products=n,
        seconds=time.perf_counter() - started,
        bytes_on_disk=folder_size(target),
        encode_seconds=encode_seconds,
        texts_per_second=n / encode_seconds if encode_seconds else 0.0,
        factory=str(faiss_info["factory"]) if faiss_info else None,
    )


def _reranker_info(folder: Path) -> dict[str, Any]:
    info: dict[str, Any] = {"path": RERANKER_DIR}
    training = folder / "training.json"
    if training.is_file():
        data = json.loads(training.read_text(encoding="utf-8"))
        info["base_model"] = data.get("base_model")
        info["trained_on"] = data.get("trained_on")
    info["calibrated"] = (folder / "calibration.json").is_file()
    return info


def update_manifest(folder: Path, **changes: Any) -> Manifest:
    """Rewrite some manifest fields (e.g. a tuned fusion setting) atomically."""
    manifest = Manifest.read(folder)
    for key, value in changes.items():
        setattr(manifest, key, value)
    tmp = folder / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(manifest.to_json() + "\n", encoding="utf-8")
    os.replace(tmp, folder / MANIFEST_FILE)
    return manifest


def check_catalog(index_dir: Path, records: Sequence[Mapping[str, Any]], source: str) -> None:
    """Refuse judgements or logs whose catalogue is not the one an index was built from: their
    product ids would point at other products (or none), and every metric would be wrong
    without an error. ``records`` are catalogue records, as a data set loader returns them."""
    manifest = Manifest.read(Path(index_dir))
    products = [record_to_product(dict(r), source, i) for i, r in enumerate(records, start=1)]
    if catalog_hash(products) != manifest.catalog_sha256:
        raise SearchError(
            f"index {index_dir} was built from another catalogue than {source} "
            f"({manifest.products} products indexed, {len(products)} in the data set; the "
            f"catalogue hashes differ): its judgements would point at other products. Build "
            f"the index from the data set's catalogue with `search-cli build-index --catalog`"
        )


def install_reranker(index_dir: Path, model_dir: Path) -> Manifest:
    """Copy a fine-tuned reranker folder into an index, replacing any previous one atomically."""
    Manifest.read(index_dir)
    staged = Path(tempfile.mkdtemp(prefix=".reranker.tmp-", dir=index_dir))
    shutil.rmtree(staged)
    shutil.copytree(model_dir, staged)
    replace_folder(staged, index_dir / RERANKER_DIR)
    return update_manifest(index_dir, reranker=_reranker_info(index_dir / RERANKER_DIR))


@dataclass
class SearchIndex:
    """An index loaded from disk. The FAISS index is loaded on first use."""

    path: Path
    manifest: Manifest
    products: list[Product]
    bm25: BM25Index
    analyzer: Analyzer
    _faiss: Any = field(default=None, repr=False)
    _filters: FilterIndex | None = field(default=None, repr=False)

    @property
    def filters(self) -> FilterIndex:
        """The catalogue's filterable fields as arrays, compiled on first use."""
        if self._filters is None:
            self._filters = FilterIndex(self.products)
        return self._filters

    @property
    def has_dense(self) -> bool:
        return self.manifest.faiss is not None

    @property
    def faiss_index(self) -> Any:
        if self._faiss is None:
            if not self.has_dense:
                raise IndexLoadError(
                    f"index {self.path} has no dense part; rebuild it with --model"
                )
            import faiss

            try:
                self._faiss = faiss.read_index(str(self.path / FAISS_FILE))
            except RuntimeError as exc:
                raise IndexLoadError(
                    f"index {self.path}: cannot read {FAISS_FILE} ({exc}); rebuild it"
                ) from None
            if self._faiss.ntotal != self.manifest.products:
                raise IndexLoadError(
                    f"index {self.path} is damaged: FAISS holds "
                    f"{self._faiss.ntotal} vectors for "
                    f"{self.manifest.products} products; rebuild it"
                )
        return self._faiss

    @property
    def reranker_path(self) -> Path | None:
        path = self.path / RERANKER_DIR
        return path if self.manifest.reranker and path.is_dir() else None


def load_index(folder: str | Path, *, verify_hashes: bool = False) -> SearchIndex:
    """Load an index, refusing a missing, foreign, damaged or incompatible one."""
    folder = Path(folder)
    manifest = Manifest.read(folder)
    check_files(folder, manifest, verify_hashes=verify_hashes)
    current = Analyzer().config()
    if {k: manifest.analyzer.get(k) for k in ("name", "version")} != {
        k: current[k] for k in ("name", "version")
    }:
        raise IndexLoadError(
            f"index {folder} was analysed with {manifest.analyzer}, this "
            f"version uses {current}; rebuild it"
        )
    try:
        products = read_products(folder / PRODUCTS_FILE)
        vocabulary = json.loads((folder / "bm25_vocabulary.json").read_text(encoding="utf-8"))
        arrays = {
            name: np.load(folder / f"bm25_{name}.npy", allow_pickle=False) for name in _BM25_ARRAYS
        }
    except (ValueError, OSError) as exc:
        raise IndexLoadError(f"index {folder} is damaged ({exc}); rebuild it") from None
    if len(products) != manifest.products:
        raise IndexLoadError(
            f"index {folder} is damaged: {len(products)} products stored, "
            f"manifest says {manifest.products}; rebuild it"
        )
    params = BM25Params(**{k: manifest.bm25[k] for k in ("k1", "b", "epsilon")})
    bm25 = BM25Index(
        vocabulary,
        arrays["indptr"],
        arrays["doc_indices"],
        arrays["contributions"],
        len(products),
        params,
    )
    analyzer = Analyzer(
        stem=manifest.analyzer.get("stem", True), stopwords=manifest.analyzer.get("stopwords", True)
    )
    return SearchIndex(
        path=folder, manifest=manifest, products=products, bm25=bm25, analyzer=analyzer
    )
