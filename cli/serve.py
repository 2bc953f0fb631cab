"""``search-cli serve``: the HTTP search service (see ``serve/app.py``)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import click

from shopsearch.cli.main import DEFAULT_INDEX, cli
from shopsearch.errors import SearchError

CONFIG_ENV = "SHOPSEARCH_SERVE_CONFIG"
TOKEN_ENV = "SHOPSEARCH_ADMIN_TOKEN"


def app_from_env():  # pragma: no cover - run in uvicorn's worker processes
    """The app factory uvicorn imports in each worker (``--workers`` > 1 needs an import
    string); the configuration travels in an environment variable."""
    from shopsearch.cli.main import _quiet_libraries
    from shopsearch.serve.app import ServeConfig, create_app

    _quiet_libraries(False)
    _one_thread()
    return create_app(ServeConfig(**json.loads(os.environ[CONFIG_ENV])))


def _one_thread() -> None:
    # Measured in wave 1: two intra-op threads per worker on a busy 2-core machine made a
    # query 30x slower. One worker per core, one thread per worker.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    try:
        import faiss

        faiss.omp_set_num_threads(1)
    except ImportError:  # pragma: no cover - faiss is a dependency
        pass


@cli.command("serve")
@click.option(
    "--index",
    "index_dir",
    default=DEFAULT_INDEX,
    show_default=True,
    type=click.Path(path_type=Path),
    help="Index folder to serve (watched: a new reranker or rebuild is picked up).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Worker processes; one per core. Each loads the models once.",
)
@click.option(
    "--feedback-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the feedback database and the click log go. Default: <index>-feedback.",
)
@click.option(
    "--feedback-window",
    default=600.0,
    show_default=True,
    type=float,
    help="Seconds a served list takes clicks before it is written to the click log.",
)
@click.option(
    "--fsync",
    default="normal",
    show_default=True,
    type=click.Choice(["normal", "always"]),
    help="normal: every event survives a process crash; always: a power loss too "
    "(an fsync per search).",
)
@click.option(
    "--admin-token",
    envvar=TOKEN_ENV,
    help=f"Enables /admin/* with Authorization: Bearer <token> (or ${TOKEN_ENV}).",
)
@click.option(
    "--concurrency",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Searches one worker runs at once.",
)
@click.option(
    "--queue",
    default=16,
    show_default=True,
    type=click.IntRange(0, 10_000),
    help="Searches one worker lets wait; more get 503 + Retry-After.",
)
@click.option(
    "--queue-timeout",
    default=2.0,
    show_default=True,
    type=float,
    help="Seconds a search may wait for a slot before it gets 503.",
)
@click.option(
    "--watch-interval",
    default=2.0,
    show_default=True,
    type=float,
    help="Seconds between checks of the index manifest for a new version (0: off; "
    "POST /admin/reload and SIGHUP still reload).",
)
@click.option(
    "--cache-size",
    default=4096,
    show_default=True,
    type=click.IntRange(0, 10_000_000),
    help="Entries of each worker's result and query-embedding caches (0: off, e.g. to "
    "load-test the pipeline rather than the cache).",
)
@click.option(
    "--quality-window",
    default=2000,
    show_default=True,
    type=click.IntRange(1, 1_000_000),
    help="Settled requests the online CTR / MRR / ECE gauges are computed over.",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[ADDRESS]",
    help="Serve a sharded index (build-index --ray) with its shards as Ray actors: alone, on "
    "a Ray started on this machine; with ADDRESS, on that cluster. One HTTP worker.",
)
@click.option("--log-level", default="warning", show_default=True)
def serve_cmd(
    index_dir: Path,
    host: str,
    port: int,
    workers: int,
    feedback_dir: Path | None,
    feedback_window: float,
    fsync: str,
    admin_token: str | None,
    concurrency: int,
    queue: int,
    queue_timeout: float,
    watch_interval: float,
    quality_window: int,
    cache_size: int,
    log_level: str,
    ray_address: str | None,
) -> None:
    """Serve the index over HTTP: a search page at /, the search API, click capture,
    Prometheus metrics and hot reload.

    \b
    Examples:
      search-cli serve                                  # http://127.0.0.1:8000/
      curl 'http://127.0.0.1:8000/search?q=夏季连衣裙&k=5'
      curl -X POST http://127.0.0.1:8000/events -H 'content-type: application/json' \\
           -d '{"request_id": "...", "product_id": "..."}'
      search-cli serve --index hd-index --workers 2 --admin-token "$TOKEN"
      curl -X POST -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8000/admin/reload

    \b
    Clicks go to <index>-feedback/clicks-YYYY-MM-DD.jsonl, the format
    `search-cli train-reranker --clicks` reads. API docs: http://127.0.0.1:8000/docs
    """
    import uvicorn

    from shopsearch.distributed.manifest import ShardedManifest, is_sharded_index
    from shopsearch.index.manifest import Manifest
    from shopsearch.serve.app import ServeConfig, create_app

    # A missing or foreign index is refused before binding a port.
    ShardedManifest.read(index_dir) if is_sharded_index(index_dir) else Manifest.read(index_dir)
    if ray_address is not None and (workers != 1 or not is_sharded_index(index_dir)):
        raise SearchError(
            "--ray serves a sharded index (built with `build-index --ray`) from one HTTP "
            "worker; its shards are the Ray actors"
        )
    if feedback_window < 0:
        raise SearchError("--feedback-window must be >= 0 seconds")
    config = ServeConfig(
        index=str(index_dir),
        feedback_dir=str(feedback_dir) if feedback_dir else None,
        feedback_window_s=feedback_window,
        fsync=fsync,
        admin_token=admin_token,
        concurrency=concurrency,
        queue=queue,
        queue_timeout_s=queue_timeout,
        watch_interval_s=watch_interval,
        quality_window=quality_window,
        cache_size=cache_size,
    )
    click.echo(
        f"serving {index_dir} on http://{host}:{port}/ ({workers} worker(s)); "
        f"click log in {config.feedback_folder}; "
        f"admin endpoints {'on' if admin_token else 'off (no --admin-token)'}",
        err=True,
    )
    if ray_address is not None:
        from shopsearch.distributed.cluster import local_cpus, ray_session
        from shopsearch.distributed.engine import RayShardedSearchEngine

        _one_thread()
        with ray_session(ray_address, num_cpus=local_cpus(os.cpu_count() or 1)):
            app = create_app(config, open_engine=RayShardedSearchEngine.open)
            uvicorn.run(app, host=host, port=port, log_level=log_level)
        return
    if workers == 1:
        _one_thread()
        uvicorn.run(create_app(config), host=host, port=port, log_level=log_level)
        return
    metrics_dir = tempfile.mkdtemp(prefix="shopsearch-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    os.environ[CONFIG_ENV] = json.dumps(asdict(config))
    try:
        uvicorn.run(
            "shopsearch.cli.serve:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
        )
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
