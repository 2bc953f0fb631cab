"""Building a sharded index with a pool of workers (Ray actors, or one in-process worker).

The catalogue is split into partitions by ``shard_of`` (a hash of the product id). The build
runs in two phases over one pool of workers, each of which loads the model once:

1. **encode**: the product texts, shard by shard, in chunks of ``chunk_size``, each chunk
   handed to the next idle worker (so 4 workers keep busy on 2 shards, and the progress bar
   moves per chunk). Vectors stay in Ray's object store; the driver only sees timings.
2. **write**: each shard is written by one worker as an ordinary index
   (``index.store.build_index``: BM25 analysis, segment files, checksums, FAISS when the factory
   is approximate) from its products and the vectors of its chunks; the worker returns the
   shard's BM25 statistics.

The driver then adds the shards' statistics into the catalogue's (``CollectionStats.merge``),
writes them beside the shards and publishes the top-level manifest (distributed/manifest.py).
The FAISS factory is chosen for the whole catalogue, not per shard, so a shard is searched as
the unsharded index would search it. Workers write the shard folders themselves, so the index
folder must be one every worker can write: this machine, or a filesystem the cluster shares.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from shopsearch.errors import SearchError
from shopsearch.files import fsync_dir
from shopsearch.index.generations import RERANKER_DIR, SHARDS_DIR, publish
from shopsearch.index.lock import writer_lock
from shopsearch.index.manifest import MANIFEST_FILE, Manifest, read_raw_manifest
from shopsearch.index.segments import SegmentReader, VerifiedReader, catalog_digest
from shopsearch.retrieval.analysis import Analyzer
from shopsearch.retrieval.base import Encoder
from shopsearch.retrieval.bm25 import BM25Params, CollectionStats
from shopsearch.retrieval.dense import choose_factory, is_exact_factory
from shopsearch.retrieval.fusion import FusionConfig
from shopsearch.retrieval.hybrid import DEFAULT_DEPTH
from shopsearch.retrieval.types import Product

from .manifest import ShardedManifest, is_sharded_index, manifest_sha256, shard_of, write_stats

logger = logging.getLogger(__name__)

DEFAULT_CHUNK = 1024

#: Makes the encoder a worker uses; called once per worker, in the worker.
EncoderFactory = Callable[[], Encoder]


@dataclass(frozen=True)
class ModelEncoder:
    """An ``EncoderFactory`` for a model by name (a registry name, a folder or a hub id)."""

    model: str

    def __call__(self) -> Encoder:
        from shopsearch.retrieval.encoders import SentenceTransformerEncoder

        return SentenceTransformerEncoder(self.model)


@dataclass(frozen=True)
class ShardSettings:
    """What every shard is built with (plain data, sent to the workers)."""

    analyzer: dict[str, Any]
    bm25: dict[str, Any]
    factory: str | None
    fusion: dict[str, Any]
    candidate_depth: int
    source: str


@dataclass
class ShardResult:
    """What a worker reports of a shard it wrote."""

    path: str
    products: int
    manifest_sha256: str
    stats: CollectionStats
    seconds: float


class _Precomputed:
    """An ``Encoder`` whose document tower returns vectors computed earlier (by the workers
    that encoded the shard's chunks), for texts given in the same order."""

    def __init__(self, vectors: np.ndarray, record: Mapping[str, Any]) -> None:
        self.vectors = vectors
        self.record = dict(record)
        self.name = str(record["name"])
        self.dim = int(record["dim"])

    def encode_queries(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        raise SearchError("a precomputed encoder has no query tower")

    def encode_documents(
        self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        if len(texts) != len(self.vectors):
            raise SearchError(f"{len(self.vectors)} vectors were computed for {len(texts)} texts")
        return self.vectors

    def describe(self) -> dict[str, Any]:
        return self.record


class ShardBuilder:
    """One worker: loads the encoder once, then encodes chunks and writes shards. A Ray actor
    wraps it (``ray.remote(ShardBuilder)``); the in-process pool calls it directly."""

    def __init__(self, make_encoder: EncoderFactory | None, threads: int | None = None) -> None:
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        self.encoder = make_encoder() if make_encoder is not None else None
        self.encode_seconds = 0.0

    def describe(self) -> dict[str, Any] | None:
        """The encoder's manifest record (None without an encoder)."""
        if self.encoder is None:
            return None
        from shopsearch.index.store import encoder_record

        return encoder_record(self.encoder)

    def encode(self, texts: list[str], batch_size: int) -> tuple[np.ndarray, float]:
        """Document vectors ``(len(texts), dim)`` float32 and the seconds they took."""
        from shopsearch.index.store import encode

        if self.encoder is None:
            raise SearchError("this worker has no encoder (a BM25-only build)")
        started = time.perf_counter()
        vectors = encode(self.encoder, texts, self.encoder.dim, batch_size)
        seconds = time.perf_counter() - started
        self.encode_seconds += seconds
        return vectors, seconds

    def write_shard(
        self,
        products: list[Product],
        folder: str,
        settings: ShardSettings,
        record: dict[str, Any] | None,
        *vectors: np.ndarray,
    ) -> ShardResult:
        """Write ``products`` (sorted by id) as an index at ``folder`` with the vectors of its
        chunks, in order; returns its BM25 statistics."""
        from shopsearch.index.store import build_index

        started = time.perf_counter()
        encoder = None
        if record is not None:
            encoder = _Precomputed(np.concatenate(vectors) if vectors else np.zeros(0), record)
        build_index(
            products,
            Path(folder),
            encoder=encoder,
            analyzer=Analyzer.from_config(settings.analyzer),
            bm25_params=BM25Params(**{k: settings.bm25[k] for k in ("k1", "b", "epsilon")}),
            factory=settings.factory,
            fusion=FusionConfig.from_dict(settings.fusion),
            source=settings.source,
            candidate_depth=settings.candidate_depth,
        )
        return ShardResult(
            folder,
            len(products),
            manifest_sha256(Path(folder)),
            shard_stats(Path(folder)),
            time.perf_counter() - started,
        )


def shard_stats(index_dir: Path) -> CollectionStats:
    """The BM25 statistics of one index folder, from its segments' stored frequencies (a
    shard is freshly built: one segment, no deletions)."""
    manifest = Manifest.read(index_dir)
    reader = VerifiedReader(index_dir, manifest, verify=False)
    parts = []
    for record in manifest.segments:
        segment = SegmentReader(reader, record)
        if segment.deleted().any():
            raise SearchError(f"shard {index_dir} has deleted rows; rebuild the sharded index")
        parts.append(CollectionStats.of(segment.frequencies()))
    return CollectionStats.merge(parts)


class WorkerPool(Protocol):
    """Runs ``ShardBuilder`` methods on its workers. ``encode_chunks`` returns one handle per
    chunk (the vectors, or a reference to them) and calls ``done(i, seconds)`` as each
    finishes; ``write_shards`` takes ``(products, folder, chunk handles)`` per shard."""

    workers: int

    def describe(self) -> dict[str, Any] | None: ...

    def encode_chunks(
        self, chunks: list[list[str]], batch_size: int, done: Callable[[int, float], None]
    ) -> list[Any]: ...

    def write_shards(
        self,
        jobs: list[tuple[list[Product], str, list[Any]]],
        settings: ShardSettings,
        record: dict[str, Any] | None,
        done: Callable[[ShardResult], None],
    ) -> list[ShardResult]: ...


class LocalPool:
    """One worker in this process: the same work, without Ray (tests, small catalogues)."""

    def __init__(self, make_encoder: EncoderFactory | None) -> None:
        self.builder = ShardBuilder(make_encoder)
        self.workers = 1

    def describe(self) -> dict[str, Any] | None:
        return self.builder.describe()

    def encode_chunks(
        self, chunks: list[list[str]], batch_size: int, done: Callable[[int, float], None]
    ) -> list[Any]:
        out = []
        for i, texts in enumerate(chunks):
            vectors, seconds = self.builder.encode(texts, batch_size)
            out.append(vectors)
            done(i, seconds)
        return out

    def write_shards(
        self,
        jobs: list[tuple[list[Product], str, list[Any]]],
        settings: ShardSettings,
        record: dict[str, Any] | None,
        done: Callable[[ShardResult], None],
    ) -> list[ShardResult]:
        results = []
        for products, folder, vectors in jobs:
            results.append(self.builder.write_shard(products, folder, settings, record, *vectors))
            done(results[-1])
        return results


class RayPool:
    """``workers`` Ray actors, each a ``ShardBuilder`` with one torch thread. Work goes to
    whichever actor is idle. Call inside ``cluster.ray_session``."""

    def __init__(self, ray: Any, make_encoder: EncoderFactory | None, workers: int) -> None:
        from .cluster import actor_cpus

        if workers < 1:
            raise SearchError(f"--ray-workers must be at least 1, got {workers}")
        self.ray = ray
        self.workers = workers
        remote = ray.remote(ShardBuilder).options(num_cpus=actor_cpus(ray, workers))
        self.actors = [remote.remote(make_encoder, 1) for _ in range(workers)]
        started = time.perf_counter()
        # Every actor has its model loaded before the clock of the encoding starts.
        records = ray.get([a.describe.remote() for a in self.actors])
        self.ready_seconds = time.perf_counter() - started
        self.record = records[0]

    def describe(self) -> dict[str, Any] | None:
        return self.record

    def close(self) -> None:
        """Stop the actors, freeing their CPUs (shard searchers need them next)."""
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []

    def __enter__(self) -> RayPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(
        self, tasks: list[Callable[[Any], Any]], key: Callable[[Any], Any], done: Callable
    ) -> list[Any]:
        """Run each task on the next idle actor; ``key(handle)`` is what to wait on."""
        results: list[Any] = [None] * len(tasks)
        pending = deque(enumerate(tasks))
        idle = list(self.actors)
        in_flight: dict[Any, tuple[Any, int, Any]] = {}
        while pending or in_flight:
            while idle and pending:
                i, task = pending.popleft()
                actor = idle.pop()
                handle = task(actor)
                in_flight[key(handle)] = (actor, i, handle)
            ready, _ = self.ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                actor, i, handle = in_flight.pop(ref)
                idle.append(actor)
                results[i] = handle
                done(i, self.ray.get(ref))
        return results

    def encode_chunks(
        self, chunks: list[list[str]], batch_size: int, done: Callable[[int, float], None]
    ) -> list[Any]:
        def task(texts: list[str]) -> Callable[[Any], Any]:
            return lambda actor: actor.encode.options(num_returns=2).remote(texts, batch_size)

        tasks = [task(texts) for texts in chunks]
        handles = self._run(tasks, key=lambda h: h[1], done=done)
        return [vectors_ref for vectors_ref, _ in handles]

    def write_shards(
        self,
        jobs: list[tuple[list[Product], str, list[Any]]],
        settings: ShardSettings,
        record: dict[str, Any] | None,
        done: Callable[[ShardResult], None],
    ) -> list[ShardResult]:
        def task(job: tuple[list[Product], str, list[Any]]) -> Callable[[Any], Any]:
            return lambda actor: actor.write_shard.remote(job[0], job[1], settings, record, *job[2])

        tasks = [task(job) for job in jobs]
        handles = self._run(tasks, key=lambda h: h, done=lambda _i, result: done(result))
        return list(self.ray.get(handles))


@dataclass
class ShardedBuildSummary:
    path: Path
    products: int
    shards: int
    workers: int
    seconds: float
    encode_seconds: float
    bytes_on_disk: int
    factory: str | None
    generation: int = 1
    shard_products: list[int] = field(default_factory=list)

    @property
    def overhead_seconds(self) -> float:
        """Wall time not spent encoding, counting the workers' encoding as perfectly parallel:
        ``seconds - encode_seconds / workers`` (partitioning, moving texts and vectors, BM25
        analysis, writing, statistics, publishing)."""
        return max(0.0, self.seconds - self.encode_seconds / self.workers)

    @property
    def products_per_worker_second(self) -> float:
        """Products one worker encodes per second of its encoding time."""
        return self.products / self.encode_seconds if self.encode_seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        for key in ("seconds", "encode_seconds"):
            data[key] = round(data[key], 2)
        data["overhead_seconds"] = round(self.overhead_seconds, 2)
        data["products_per_worker_second"] = round(self.products_per_worker_second, 1)
        return data


def partition(products: Sequence[Product], partitions: int) -> list[list[Product]]:
    """The products of each partition, sorted by id; refuses duplicate ids."""
    parts: list[list[Product]] = [[] for _ in range(partitions)]
    seen: set[str] = set()
    for product in products:
        if product.id in seen:
            raise SearchError(f"the catalogue has product id {product.id!r} twice")
        seen.add(product.id)
        parts[shard_of(product.id, partitions)].append(product)
    return [sorted(part, key=lambda p: p.id) for part in parts]


def build_sharded_index(
    products: Sequence[Product],
    target: Path,
    *,
    pool: WorkerPool,
    shards: int | None = None,
    analyzer: Analyzer | None = None,
    bm25_params: BM25Params = BM25Params(),
    factory: str | None = None,
    fusion: FusionConfig = FusionConfig(),
    batch_size: int = 64,
    chunk_size: int = DEFAULT_CHUNK,
    source: str = "",
    candidate_depth: int = DEFAULT_DEPTH,
    copy_reranker_from: Path | None = None,
    show_progress: bool = False,
    on_stage: Callable[[str], None] | None = None,
) -> ShardedBuildSummary:
    """Build a sharded index of ``products`` into ``target`` with ``pool``'s workers.

    ``shards`` defaults to the number of workers. A new index is built in a temporary sibling
    folder and renamed into place; over an existing sharded index the build is published as
    its next generation under the writer lock (its old shards serve until the new manifest is
    in place). An unsharded index at ``target`` is refused, not replaced.
    """
    notify = on_stage or (lambda _msg: None)
    shards = pool.workers if shards is None else shards
    if shards < 1:
        raise SearchError(f"--shards must be at least 1, got {shards}")
    if not products:
        raise SearchError("cannot build an index of an empty catalogue")
    if chunk_size < 1:
        raise SearchError(f"the chunk size must be at least 1, got {chunk_size}")
    target = Path(target).resolve()
    if target.exists() and not target.is_dir():
        raise SearchError(f"{target} exists and is not a folder")
    existing = target.is_dir() and (target / MANIFEST_FILE).is_file()
    if existing and not is_sharded_index(target):
        raise SearchError(
            f"{target} holds an unsharded index; build the sharded one into another folder "
            f"(or remove this one first)"
        )
    if target.exists() and not existing and any(target.iterdir()):
        raise SearchError(
            f"{target} exists and is not a shopsearch index; refusing to overwrite it "
            f"(choose another --index folder)"
        )
    started = time.perf_counter()
    parts = partition(products, shards)
    record = pool.describe()
    chosen = (factory or choose_factory(len(products))) if record is not None else None
    if record is not None and chosen is not None:
        is_exact_factory(chosen, int(record["dim"]))  # a bad factory fails before any work
    settings = ShardSettings(
        analyzer=(analyzer or Analyzer()).config(),
        bm25=asdict(bm25_params),
        factory=chosen,
        fusion=fusion.to_dict(),
        candidate_depth=candidate_depth,
        source=source,
    )
    notify(
        f"{len(products)} products in {sum(1 for p in parts if p)} shards "
        f"({', '.join(str(len(p)) for p in parts)}) over {pool.workers} worker(s)"
    )
    build = _ShardedBuild(
        parts, pool, settings, record, batch_size, chunk_size, show_progress, notify
    )
    if existing:
        with writer_lock(target, "build-index --ray"):
            previous = read_raw_manifest(target)
            old = (previous or {}).get("generation")
            generation = (old if isinstance(old, int) else 0) + 1
            manifest = build.write(target, generation, products, previous)
            publish(target, manifest, previous)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            manifest = build.write(tmp, 1, products, None)
            if copy_reranker_from is not None and (copy_reranker_from / "config.json").exists():
                from shopsearch.index.store import _reranker_info

                shutil.copytree(copy_reranker_from, tmp / RERANKER_DIR)
                manifest.reranker = _reranker_info(tmp / RERANKER_DIR)
            publish(tmp, manifest, None)
            try:
                os.replace(tmp, target)
            except OSError as exc:
                raise SearchError(
                    f"{target} was created by another process during this build ({exc}); "
                    f"run the build again"
                ) from None
            fsync_dir(target.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    from shopsearch.index.store import folder_size

    return ShardedBuildSummary(
        path=target,
        products=len(products),
        shards=len(manifest.shards),
        workers=pool.workers,
        seconds=time.perf_counter() - started,
        encode_seconds=build.encode_seconds,
        bytes_on_disk=sum(folder_size(target / s["path"]) for s in manifest.shards)
        + sum(int(r["bytes"]) for r in manifest.files.values()),
        factory=chosen,
        generation=manifest.generation,
        shard_products=[int(s["products"]) for s in manifest.shards],
    )


class _ShardedBuild:
    def __init__(
        self,
        parts: list[list[Product]],
        pool: WorkerPool,
        settings: ShardSettings,
        record: dict[str, Any] | None,
        batch_size: int,
        chunk_size: int,
        show_progress: bool,
        notify: Callable[[str], None],
    ) -> None:
        self.parts, self.pool, self.settings, self.record = parts, pool, settings, record
        self.batch_size, self.chunk_size = batch_size, chunk_size
        self.show_progress, self.notify = show_progress, notify
        self.encode_seconds = 0.0

    def write(
        self,
        index_dir: Path,
        generation: int,
        products: Sequence[Product],
        previous: Mapping[str, Any] | None,
    ) -> ShardedManifest:
        import secrets

        from tqdm.auto import tqdm

        from shopsearch.index.store import now

        n = sum(len(p) for p in self.parts)
        token = secrets.token_hex(3)
        non_empty = [i for i, part in enumerate(self.parts) if part]
        chunk_handles: dict[int, list[Any]] = {i: [] for i in non_empty}
        if self.record is not None:
            chunks: list[list[str]] = []
            owners: list[int] = []
            for i in non_empty:
                texts = [p.text() for p in self.parts[i]]
                for start in range(0, len(texts), self.chunk_size):
                    chunks.append(texts[start : start + self.chunk_size])
                    owners.append(i)
            self.notify(f"dense: encoding {n} products with {self.record['name']}")
            with tqdm(
                total=n, unit="products", desc="encoding", disable=not self.show_progress
            ) as bar:

                def encoded(i: int, seconds: float) -> None:
                    self.encode_seconds += seconds
                    bar.update(len(chunks[i]))

                handles = self.pool.encode_chunks(chunks, self.batch_size, encoded)
            for owner, handle in zip(owners, handles):
                chunk_handles[owner].append(handle)
        shards_dir = index_dir / SHARDS_DIR
        shards_dir.mkdir(exist_ok=True)
        jobs = [
            (self.parts[i], str(shards_dir / f"{generation:06d}-{i:03d}-{token}"), chunk_handles[i])
            for i in non_empty
        ]
        self.notify(f"writing {len(jobs)} shards (BM25 analysis, segments, checksums)")
        with tqdm(
            total=len(jobs), unit="shards", desc="writing", disable=not self.show_progress
        ) as bar:
            results = self.pool.write_shards(
                jobs, self.settings, self.record, lambda _result: bar.update(1)
            )
        stats = CollectionStats.merge(r.stats for r in results)
        if stats.n_docs != n:
            raise SearchError(f"the shards hold {stats.n_docs} products, the catalogue {n}")
        stats_record, files = write_stats(index_dir / f"stats-{generation:06d}-{token}", stats)
        fsync_dir(index_dir)
        stamp = now()
        created = str((previous or {}).get("created") or stamp)
        encoder = self.record
        return ShardedManifest(
            products=n,
            catalog_sha256=catalog_digest(products),
            partitions=len(self.parts),
            shards=[
                {
                    "path": str(Path(r.path).relative_to(index_dir)),
                    "partition": i,
                    "products": r.products,
                    "manifest_sha256": r.manifest_sha256,
                }
                for i, r in zip(non_empty, results)
            ],
            bm25_stats=stats_record,
            analyzer=self.settings.analyzer,
            bm25=self.settings.bm25,
            encoder=encoder,
            faiss=None
            if encoder is None
            else {"factory": self.settings.factory, "metric": "inner_product", "ntotal": n},
            fusion=self.settings.fusion,
            files=files,
            reranker=(previous or {}).get("reranker"),
            catalog_source=self.settings.source,
            candidate_depth=self.settings.candidate_depth,
            created=created,
            generation=generation,
            updated=stamp,
        )


def build_with_ray(
    products: Sequence[Product],
    target: Path,
    *,
    address: str | None,
    workers: int | None,
    shards: int | None,
    make_encoder: EncoderFactory | None,
    **options: Any,
) -> ShardedBuildSummary:
    """``build_sharded_index`` on ``workers`` Ray actors (default: one per CPU of the
    cluster), on a Ray started here (``address`` empty) or the cluster at ``address``.
    ``options`` are ``build_sharded_index``'s."""
    from .cluster import cluster_cpus, local_cpus, ray_session

    if workers is not None and workers < 1:
        raise SearchError(f"--ray-workers must be at least 1, got {workers}")
    if shards is not None and shards < 1:
        raise SearchError(f"--shards must be at least 1, got {shards}")
    with ray_session(address, num_cpus=local_cpus(workers or os.cpu_count() or 1)) as ray:
        workers = workers or max(1, int(cluster_cpus(ray)))
        notify = options.get("on_stage") or (lambda _msg: None)
        notify(f"starting {workers} Ray worker(s), each loading the model once")
        with RayPool(ray, make_encoder, workers) as pool:
            return build_sharded_index(products, target, pool=pool, shards=shards, **options)
