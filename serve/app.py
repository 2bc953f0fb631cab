"""The HTTP search service: FastAPI over the one search pipeline (``SearchEngine.search``).

Endpoints::

    GET  /                  the search page (serve/static)
    GET  /search            ?q=&k=&category=&min_price=&max_price=&explain=&session_id=
    POST /search            the same as a JSON body
    POST /events            {"request_id", "product_id", "type": "click" | "purchase"}
    GET  /facets            categories and price range, for a search page's filters
    GET  /health, /ready    liveness; readiness (an engine is loaded) with versions
    GET  /metrics           Prometheus
    POST /admin/reload      load the index as it is now and swap it in  (token)
    POST /admin/feedback/flush   close every open feedback window and write the click log (token)

FastAPI (with uvicorn) because it is the field's standard for Python model services: typed
request models, OpenAPI docs at ``/docs`` for free, async admission control in front of a
thread pool for the CPU-bound pipeline.

Overload: each worker runs ``concurrency`` searches at once (one per core it has: the pipeline
is CPU-bound) and lets at most ``queue`` more wait, each for at most ``queue_timeout_s``;
past that it answers 503 with ``Retry-After`` at once instead of letting latency grow
without bound.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from shopsearch import __version__
from shopsearch.errors import SearchError
from shopsearch.serve.feedback import FeedbackError, FeedbackStore, ShownRow
from shopsearch.serve.metrics import OnlineQualityCollector, ServerMetrics, render
from shopsearch.serve.reload import EngineHolder, ServedEngine, open_default

logger = logging.getLogger(__name__)

# resolve(): in an editable install this file is a link, and StaticFiles serves only files
# whose real path lies inside its folder.
STATIC = Path(__file__).resolve().parent / "static"
STAGES = ("bm25", "dense", "hybrid", "rerank")


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``search-cli serve`` configures; defaults are the documented ones."""

    index: str = "search-index"
    feedback_dir: str | None = None  # default: <index>-feedback beside the index
    feedback_window_s: float = 600.0
    fsync: str = "normal"
    max_log_bytes: int = 64 * 1024 * 1024
    admin_token: str | None = None
    max_k: int = 100
    max_query_chars: int = 500
    max_body_bytes: int = 64 * 1024
    concurrency: int = 1
    queue: int = 16
    queue_timeout_s: float = 2.0
    watch_interval_s: float = 2.0
    export_interval_s: float = 5.0
    quality_window: int = 2000
    # Entries of the engine's result and query-embedding caches (0: none); see retrieval/cache.py.
    cache_size: int = 4096

    @property
    def feedback_folder(self) -> Path:
        if self.feedback_dir:
            return Path(self.feedback_dir)
        index = Path(self.index)
        return index.with_name(index.name + "-feedback")


class ApiError(Exception):
    def __init__(self, status: int, kind: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers


class SearchBody(BaseModel):
    q: str = Field(description="The query, Chinese or English.")
    k: int = Field(10, description="Products to return (1 to the server's max_k, 100).")
    category: str | None = Field(None, description="Only this category or one level of it.")
    min_price: float | None = None
    max_price: float | None = None
    explain: bool = Field(False, description="Add matched terms per product.")
    stage: str | None = Field(None, description="Stop after bm25, dense, hybrid or rerank.")
    session_id: str | None = Field(None, description="The shopper's session, for the log.")
    user_id: str | None = None


class EventBody(BaseModel):
    request_id: str = Field(description="The request_id /search returned.")
    product_id: str = Field(description="A product that response showed.")
    type: str = Field("click", description="click or purchase (a purchase implies a click).")


class Admission:
    """At most ``concurrency`` searches running and ``queue`` waiting, per worker."""

    def __init__(self, concurrency: int, queue: int, timeout_s: float) -> None:
        self.slots = asyncio.Semaphore(concurrency)
        self.queue, self.timeout_s = queue, timeout_s
        self.waiting = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        busy = ApiError(
            503, "overloaded", "the server is busy; retry shortly", {"Retry-After": "1"}
        )
        if self.slots.locked() and self.waiting >= self.queue:
            raise busy
        self.waiting += 1
        try:
            await asyncio.wait_for(self.slots.acquire(), self.timeout_s)
        except asyncio.TimeoutError:
            raise busy from None
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self.slots.release()


def _check_search(body: SearchBody, config: ServeConfig) -> None:
    if not body.q.strip():
        raise ApiError(400, "bad_request", "q is empty; type some words to search for")
    if len(body.q) > config.max_query_chars:
        raise ApiError(
            400,
            "bad_request",
            f"q has {len(body.q)} characters; at most {config.max_query_chars} are accepted",
        )
    if not 1 <= body.k <= config.max_k:
        raise ApiError(400, "bad_request", f"k must be between 1 and {config.max_k}, got {body.k}")
    for name in ("min_price", "max_price"):
        value = getattr(body, name)
        if value is not None and not (value == value and abs(value) != float("inf")):
            raise ApiError(400, "bad_request", f"{name} must be a finite number")
    if body.min_price is not None and body.max_price is not None:
        if body.min_price > body.max_price:
            raise ApiError(
                400,
                "bad_request",
                f"min_price {body.min_price} is above max_price {body.max_price}",
            )
    if body.stage is not None and body.stage not in STAGES:
        raise ApiError(
            400, "bad_request", f"stage must be one of {', '.join(STAGES)}, got {body.stage!r}"
        )


def create_app(
    config: ServeConfig, *, open_engine: Callable[[Path], Any] = open_default
) -> FastAPI:
    """The service for one index. The engine loads when the app starts (uvicorn's lifespan)."""
    if open_engine is open_default:
        open_engine = functools.partial(open_default, cache_size=config.cache_size)
    holder = EngineHolder(config.index, open_engine)
    metrics = ServerMetrics()
    store = FeedbackStore(
        config.feedback_folder,
        window_s=config.feedback_window_s,
        max_log_bytes=config.max_log_bytes,
        fsync=config.fsync,
    )

    def propensities() -> Any:
        served = holder.current
        from shopsearch.serve.reload import DEFAULT_PROPENSITIES

        return served.propensities if served is not None else DEFAULT_PROPENSITIES

    quality = OnlineQualityCollector(store, propensities, config.quality_window)
    stop_export = threading.Event()

    def export_loop() -> None:
        while not stop_export.wait(config.export_interval_s):
            try:
                store.export()
            except Exception:  # keep exporting on the next tick; the rows stay in the database
                logger.exception("writing the click log failed")

    def reload_on_hangup() -> None:
        # `kill -HUP <pid>` reloads like POST /admin/reload. Only the main thread may set
        # signal handlers: an app run inside a thread (tests) relies on the endpoint.
        if threading.current_thread() is not threading.main_thread():
            return

        def reload_quietly() -> None:
            try:
                holder.reload()
                metrics.reloads.labels("ok").inc()
            except SearchError:
                metrics.reloads.labels("failed").inc()

        signal.signal(
            signal.SIGHUP,
            lambda signum, frame: threading.Thread(target=reload_quietly, daemon=True).start(),
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await run_in_threadpool(holder.reload)
            metrics.reloads.labels("ok").inc()
        except SearchError as exc:
            metrics.reloads.labels("failed").inc()
            logger.error("not ready: %s", exc)
        holder.start_watching(config.watch_interval_s)
        reload_on_hangup()
        exporter = threading.Thread(target=export_loop, name="click-log-export", daemon=True)
        exporter.start()
        try:
            yield
        finally:
            stop_export.set()
            holder.stop()
            exporter.join(timeout=10)
            # Windows that have passed are written now; open ones stay in the database, where
            # the next server (or another worker) takes their clicks and writes them later.
            store.export()

    app = FastAPI(
        title="shopsearch",
        version=__version__,
        description="Product search (BM25 + dense + fusion + click-probability reranker) "
        'with click capture. Errors are JSON: {"error": {"type", "message"}}.',
        lifespan=lifespan,
    )
    app.state.holder, app.state.store, app.state.metrics = holder, store, metrics
    admission = Admission(config.concurrency, config.queue, config.queue_timeout_s)

    def error_response(exc: ApiError) -> JSONResponse:
        metrics.errors.labels(exc.kind).inc()
        return JSONResponse(
            {"error": {"type": exc.kind, "message": exc.message}},
            status_code=exc.status,
            headers=exc.headers,
        )

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            if err.get("type") == "json_invalid":
                problems.append(f"the body is not valid JSON ({err.get('ctx', {}).get('error')})")
                continue
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body"))
            problems.append(f"{where or 'request'}: {err.get('msg')}")
        return error_response(ApiError(400, "bad_request", "; ".join(problems)))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("error answering %s", request.url.path)
        return error_response(
            ApiError(500, "internal", "internal error; the server log has the details")
        )

    @app.middleware("http")
    async def _count_and_limit(request: Request, call_next: Any) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > config.max_body_bytes):
            response: Response = error_response(
                ApiError(
                    413,
                    "too_large",
                    f"request bodies are limited to {config.max_body_bytes} bytes",
                )
            )
        else:
            response = await call_next(request)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        return response

    def served() -> ServedEngine:
        current = holder.current
        if current is None:
            raise ApiError(
                503,
                "not_ready",
                f"no index is loaded ({holder.last_error or 'still loading'})",
                {"Retry-After": "5"},
            )
        return current

    def run_search(current: ServedEngine, body: SearchBody) -> dict[str, Any]:
        from shopsearch.retrieval.filters import Filters

        filters = Filters(body.category, body.min_price, body.max_price)
        result = current.engine.search(
            body.q, k=body.k, filters=filters, explain=body.explain, stage=body.stage
        )
        request_id = uuid.uuid4().hex
        payload = result.to_dict()
        shown = [
            ShownRow(r["id"], r["rank"], r.get("click_probability")) for r in payload["results"]
        ]
        store.record_impressions(
            request_id,
            body.q,
            shown,
            stage=result.stage,
            version=current.version,
            session_id=body.session_id,
            user_id=body.user_id,
        )
        metrics.observe_search(result.stage, result.timings_ms, len(shown))
        return {
            "request_id": request_id,
            "version": current.version,
            **payload,
            "versions": current.versions,
        }

    async def search(body: SearchBody) -> JSONResponse:
        _check_search(body, config)
        current = served()
        metrics.in_flight.inc()
        try:
            async with admission.slot():
                try:
                    payload = await run_in_threadpool(run_search, current, body)
                except SearchError as exc:
                    raise ApiError(400, "bad_request", str(exc)) from None
        except ApiError as exc:
            if exc.kind == "overloaded":
                metrics.shed.inc()
            raise
        finally:
            metrics.in_flight.dec()
        return JSONResponse(
            payload,
            headers={
                "X-Request-Id": payload["request_id"],
                "X-Shopsearch-Version": current.version,
            },
        )

    @app.get("/search", summary="Search (query parameters)")
    async def search_get(
        q: str = Query(..., description="The query, Chinese or English."),
        k: int = Query(10, description="Products to return."),
        category: str | None = None,
        min_price: float | None = None,
        max_price: float | None = None,
        explain: bool = False,
        stage: str | None = None,
        session_id: str | None = None,
        user_id: str | None = None,
    ) -> JSONResponse:
        return await search(
            SearchBody(
                q=q,
                k=k,
                category=category,
                min_price=min_price,
                max_price=max_price,
                explain=explain,
                stage=stage,
                session_id=session_id,
                user_id=user_id,
            )
        )

    @app.post("/search", summary="Search (JSON body)")
    async def search_post(body: SearchBody) -> JSONResponse:
        return await search(body)

    @app.post("/events", summary="Record a click or purchase on a shown product")
    async def events(body: EventBody) -> dict[str, Any]:
        try:
            event = await run_in_threadpool(
                store.record_event, body.request_id, body.product_id, body.type
            )
        except FeedbackError as exc:
            raise ApiError(exc.status, "bad_event", str(exc)) from None
        metrics.events.labels(event.kind).inc()
        return {
            "recorded": event.kind,
            "request_id": event.request_id,
            "product_id": event.product_id,
            "position": event.position,
        }

    @app.get("/facets", summary="Categories and price range for filters")
    async def facets() -> dict[str, Any]:
        engine = served().engine
        price = engine.index.filters.price_range()
        return {
            "categories": engine.categories(),
            "price": None if price is None else {"min": price[0], "max": price[1]},
        }

    @app.get("/health", summary="Liveness: the process answers")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: an engine is loaded")
    async def ready() -> JSONResponse:
        current = holder.current
        if current is None:
            return JSONResponse(
                {"ready": False, "error": holder.last_error or "loading"}, status_code=503
            )
        return JSONResponse(
            {
                "ready": True,
                "version": current.version,
                "versions": current.versions,
                "index": str(holder.index_dir),
                "products": current.engine.index.manifest.products,
                "loaded_at": current.loaded_at,
                "feedback": store.counts(),
            }
        )

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics_endpoint() -> Response:
        body, content_type = await run_in_threadpool(render, metrics, quality)
        return Response(body, media_type=content_type)

    def check_admin(request: Request) -> None:
        if not config.admin_token:
            raise ApiError(
                404, "admin_disabled", "admin endpoints are off: start with --admin-token"
            )
        given = request.headers.get("authorization", "")
        expected = f"Bearer {config.admin_token}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise ApiError(
                401, "unauthorised", "admin endpoints need Authorization: Bearer <token>"
            )

    @app.post("/admin/reload", summary="Load the index as it is now and swap it in")
    async def reload(request: Request) -> dict[str, Any]:
        check_admin(request)
        started = time.perf_counter()
        try:
            current = await run_in_threadpool(holder.reload)
        except SearchError as exc:
            metrics.reloads.labels("failed").inc()
            raise ApiError(
                500, "reload_failed", f"{exc}; still serving the previous version"
            ) from None
        metrics.reloads.labels("ok").inc()
        return {
            "version": current.version,
            "versions": current.versions,
            "seconds": round(time.perf_counter() - started, 3),
        }

    @app.post("/admin/feedback/flush", summary="Write every open request to the click log")
    async def flush(request: Request) -> dict[str, Any]:
        check_admin(request)
        written = await run_in_threadpool(lambda: store.export(close_all=True))
        return {"impressions_written": written, "files": [str(p) for p in store.log_files()]}

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
