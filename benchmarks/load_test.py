"""Loopback load test of ``search-cli serve``: throughput, latency and shedding per concurrency.

Starts ``search-cli serve`` on 127.0.0.1 (a free port, its own throwaway ``--feedback-dir``),
waits for ``GET /ready``, sends a warm-up of sequential searches, and then, for each
concurrency level in turn, runs that many *closed-loop* clients for ``--duration`` seconds:
each client sends ``GET /search?q=...&k=10``, waits for the answer, and sends the next one
(cycling through the queries: the demo queries by default, or ``--queries FILE.tsv``). All
clients share one ``httpx.AsyncClient`` with a connection per client (keep-alive, no proxy).

Per level it reports:

* ``requests``: searches sent during the level (started before its end; each one finishes);
* ``QPS``: successful (200) searches per second of the level's wall time;
* ``p50/p95/p99 ms``: client-side latency of the 200s (request sent to body read): queueing
  in the server, the search, JSON and the loopback round trip;
* ``shed``: 503 answers: the server's admission control (``Admission`` in serve/app.py, per
  worker ``--concurrency`` running and ``--queue`` waiting for at most ``--queue-timeout``)
  refused the search at once with ``Retry-After`` instead of letting latency grow;
* ``errors``: anything else: other statuses (4xx, 500), client timeouts (``--request-timeout``,
  10 s) and connection errors; the JSON output has them by kind;
* ``server p50 ms``: the median of ``timings_ms.total`` the server reported for the 200s,
  i.e. the pipeline alone; client p50 minus this is queueing, HTTP and the client's overhead.

Backoff on 503: a shed client sleeps ``min(Retry-After, 0.05 s)`` before its next search. The
server says ``Retry-After: 1``; honouring it in full would leave shed clients idle for most of
the level and measure idleness, while retrying at once would measure a client spinning on
cheap 503s. The 50 ms cap (``--backoff``) keeps the offered load close to N clients while
the shedding stays visible as a count. Client errors (timeouts, refused connections) get the
same short pause. Latency of a shed request is kept apart (``shed_p50_ms`` in the JSON).

The "sustainable" level is the highest one with zero errors and zero 503s: the number of
concurrent shoppers this server takes on this machine without refusing anyone; the line under
the table says whether levels above it shed (the bounded queue at work, as intended) or
errored (a problem). Mind that client and server share the machine (loopback): on a small box
the client's own CPU use (httpx, JSON parsing) competes with the workers, so the QPS is a lower
bound of what the server does against remote clients.

Bounded: every request has a client timeout; the whole run has a hard deadline (ready timeout
+ levels x (duration + request timeout + 5 s)); the server runs in its own process group and
is always stopped (SIGTERM, then SIGKILL after 10 s), also on Ctrl-C or SIGTERM.

    # the demo catalogue (2,400 bilingual products), BM25 only, demo queries
    search-cli build-index --index /tmp/demo-index --no-dense
    python benchmarks/load_test.py --index /tmp/demo-index --concurrency-levels 1,4,16 \\
        --duration 5
    # Home Depot (54,667 products) with its dev queries, two workers
    search-cli build-index --catalog ../shared/data/homedepot/products.jsonl \\
        --index /tmp/hd-bm25 --no-dense
    python benchmarks/load_test.py --index /tmp/hd-bm25 --workers 2 \\
        --queries ../shared/data/homedepot/queries.dev.tsv
    # a tight admission queue: watch it shed (server args in the --server-arg=... form)
    python benchmarks/load_test.py --index /tmp/demo-index --concurrency-levels 1,8 \\
        --duration 3 --server-arg=--concurrency=1 --server-arg=--queue=0 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shopsearch.benchmarks.machine import describe_machine

DEFAULT_LEVELS = (1, 2, 4, 8, 16, 32)
STOP_GRACE_S = 10.0
SLACK_S = 5.0
# Server options the load test sets itself; passing them through --server-arg is refused.
RESERVED_SERVER_ARGS = ("--host", "--port", "--index", "--workers")


class LoadTestError(RuntimeError):
    """The load test could not run: the server did not start, died, or the run overran."""


@dataclass
class LevelResult:
    """One concurrency level: counts, throughput and latency percentiles (ms)."""

    concurrency: int
    seconds: float
    requests: int
    ok: int
    shed: int
    errors: int
    qps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    server_p50_ms: float
    shed_p50_ms: float
    error_kinds: dict[str, int] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return self.ok > 0 and self.errors == 0 and self.shed == 0


@dataclass
class LoadTestResult:
    levels: list[LevelResult]
    index: str
    workers: int
    server_args: list[str]
    queries: int
    query_source: str
    duration_s: float
    warmup: int
    k: int
    backoff_s: float
    machine: str

    @property
    def sustainable(self) -> LevelResult | None:
        """The highest level with no errors and no 503s (None when every level had some)."""
        return sustainable_level(self.levels)

    @property
    def shed_above(self) -> list[int]:
        """Levels above the sustainable one (all levels when there is none) that shed."""
        top = self.sustainable.concurrency if self.sustainable else 0
        return [r.concurrency for r in self.levels if r.concurrency > top and r.shed]

    @property
    def errors_above(self) -> list[int]:
        top = self.sustainable.concurrency if self.sustainable else 0
        return [r.concurrency for r in self.levels if r.concurrency > top and r.errors]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["levels"] = [_finite(asdict(r)) for r in self.levels]
        best = self.sustainable
        out["sustainable"] = None if best is None else _finite(asdict(best))
        out["shed_above"] = self.shed_above
        out["errors_above"] = self.errors_above
        return out


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    # JSON has no NaN: a level without 200s has no percentiles.
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def sustainable_level(levels: Sequence[LevelResult]) -> LevelResult | None:
    clean = [r for r in levels if r.clean]
    return max(clean, key=lambda r: r.concurrency) if clean else None


def retry_backoff(retry_after: str | None, cap: float) -> float:
    """Seconds a shed client waits: ``min(Retry-After, cap)``; ``cap`` when absent or odd."""
    try:
        seconds = float(retry_after) if retry_after is not None else cap
    except ValueError:  # an HTTP date: not what this server sends
        seconds = cap
    return max(0.0, min(seconds, cap))


def default_queries() -> list[str]:
    from shopsearch.demo.queries import demo_queries

    return [text for _, text in demo_queries()]


def load_queries(path: Path) -> list[str]:
    from shopsearch.benchmarks.trec import read_queries

    return list(read_queries(path).values())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log_stderr(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no server output)"
    return "\n".join(text.splitlines()[-lines:]) or "(no server output)"


class Server:
    """``search-cli serve`` in its own process group on 127.0.0.1; ``stop()`` always ends it."""

    def __init__(
        self,
        index: Path,
        *,
        workers: int,
        server_args: Sequence[str],
        folder: Path,
        port: int | None = None,
    ) -> None:
        for arg in server_args:
            if arg.split("=", 1)[0] in RESERVED_SERVER_ARGS:
                raise LoadTestError(f"{arg!r}: the load test sets {arg.split('=', 1)[0]} itself")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = folder / "server.log"
        feedback = folder / "feedback"
        self.command = [
            sys.executable,
            "-c",
            "from shopsearch.cli.main import main; main()",
            "serve",
            "--index",
            str(index),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(workers),
            "--feedback-dir",
            str(feedback),
            *server_args,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ)
        env.setdefault("HF_HUB_OFFLINE", "1")
        with self.log_path.open("wb") as out:
            # Own session: a Ctrl-C in the terminal reaches only us, and we stop the whole
            # group (uvicorn's worker processes too) ourselves.
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def output(self) -> str:
        return _tail(self.log_path)

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise LoadTestError(f"the server exited (code {code}); its output:\n{self.output()}")

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        import httpx

        deadline = time.monotonic() + timeout
        last = "no answer yet"
        with httpx.Client(base_url=self.url, timeout=2.0, trust_env=False) as client:
            while True:
                self.check_alive()
                try:
                    response = client.get("/ready")
                    body = response.json()
                    if response.status_code == 200:
                        return body
                    last = f"{response.status_code} {body}"
                    error = body.get("error") if isinstance(body, dict) else None
                    if error and error != "loading":  # the index failed to load
                        raise LoadTestError(
                            f"the server is up but not ready: {error}\nits output:\n{self.output()}"
                        )
                except (httpx.HTTPError, ValueError) as exc:
                    last = f"{type(exc).__name__}: {exc}"
                if time.monotonic() > deadline:
                    raise LoadTestError(
                        f"the server was not ready after {timeout:.0f} s (last /ready: {last}); "
                        f"its output:\n{self.output()}"
                    )
                time.sleep(0.1)

    def stop(self) -> int | None:
        """SIGTERM to the group, SIGKILL after a grace period; the exit code (None if unknown)."""
        proc = self.proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    _signal_group(proc.pid, signal.SIGKILL)
                    proc.wait(5)
        finally:
            # Worker processes that outlived their supervisor.
            _signal_group(proc.pid, signal.SIGKILL)
        return proc.returncode


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def _warm_up(client: Any, queries: Sequence[str], n: int, k: int) -> None:
    for i in range(n):
        query = queries[i % len(queries)]
        response = await client.get("/search", params={"q": query, "k": k})
        if response.status_code != 200:
            raise LoadTestError(
                f"warm-up search {query!r} answered {response.status_code}: {response.text[:500]}"
            )


async def _run_level(
    client: Any,
    queries: Sequence[str],
    cursor: list[int],
    concurrency: int,
    duration: float,
    k: int,
    backoff: float,
) -> LevelResult:
    import httpx

    ok_ms: list[float] = []
    shed_ms: list[float] = []
    server_ms: list[float] = []
    errors: Counter[str] = Counter()

    def next_query() -> str:
        # One event loop thread: the shared cursor needs no lock.
        query = queries[cursor[0] % len(queries)]
        cursor[0] += 1
        return query

    start = time.perf_counter()
    stop_at = start + duration

    async def one_client() -> None:
        while time.perf_counter() < stop_at:
            query = next_query()
            sent = time.perf_counter()
            try:
                response = await client.get("/search", params={"q": query, "k": k})
            except httpx.TimeoutException:
                errors["timeout"] += 1
                await asyncio.sleep(backoff)
                continue
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] += 1
                await asyncio.sleep(backoff)
                continue
            ms = (time.perf_counter() - sent) * 1000
            if response.status_code == 200:
                try:
                    server_ms.append(float(response.json()["timings_ms"]["total"]))
                except (ValueError, KeyError, TypeError):
                    errors["200 without timings_ms.total"] += 1
                    continue
                ok_ms.append(ms)
            elif response.status_code == 503:
                shed_ms.append(ms)
                await asyncio.sleep(retry_backoff(response.headers.get("retry-after"), backoff))
            else:
                errors[str(response.status_code)] += 1

    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    nan = float("nan")
    p50, p95, p99 = np.percentile(ok_ms, [50, 95, 99]) if ok_ms else (nan, nan, nan)
    n_errors = sum(errors.values())
    return LevelResult(
        concurrency=concurrency,
        seconds=round(seconds, 3),
        requests=len(ok_ms) + len(shed_ms) + n_errors,
        ok=len(ok_ms),
        shed=len(shed_ms),
        errors=n_errors,
        qps=len(ok_ms) / seconds,
        p50_ms=float(p50),
        p95_ms=float(p95),
        p99_ms=float(p99),
        server_p50_ms=float(np.median(server_ms)) if server_ms else nan,
        shed_p50_ms=float(np.median(shed_ms)) if shed_ms else nan,
        error_kinds=dict(errors),
    )


async def _measure(
    server: Server,
    queries: Sequence[str],
    levels: Sequence[int],
    *,
    duration: float,
    warmup: int,
    k: int,
    request_timeout: float,
    backoff: float,
    log: Callable[[str], None],
) -> list[LevelResult]:
    import httpx

    most = max(levels)
    limits = httpx.Limits(max_connections=most + 4, max_keepalive_connections=most + 4)
    async with httpx.AsyncClient(
        base_url=server.url,
        timeout=httpx.Timeout(request_timeout),
        limits=limits,
        trust_env=False,
    ) as client:
        log(f"warm-up: {warmup} searches")
        await _warm_up(client, queries, warmup, k)
        cursor = [warmup]
        results = []
        for level in levels:
            log(f"{level} client(s) for {duration:g} s")
            result = await _run_level(client, queries, cursor, level, duration, k, backoff)
            server.check_alive()
            log(
                f"  {result.requests} requests, {result.qps:.1f} QPS, p99 {result.p99_ms:.1f} ms, "
                f"{result.shed} shed, {result.errors} errors"
            )
            results.append(result)
        return results


def run_load_test(
    index: Path | str,
    *,
    levels: Sequence[int] = DEFAULT_LEVELS,
    duration: float = 60.0,
    workers: int = 1,
    queries: Sequence[str] | None = None,
    query_source: str = "demo queries",
    server_args: Sequence[str] = (),
    warmup: int = 20,
    k: int = 10,
    request_timeout: float = 10.0,
    ready_timeout: float = 120.0,
    backoff: float = 0.05,
    log: Callable[[str], None] = _log_stderr,
) -> LoadTestResult:
    """Start the server, measure every level in order, stop the server; see the module doc."""
    levels = list(levels)
    if not levels or min(levels) < 1:
        raise ValueError(f"concurrency levels must be >= 1, got {levels}")
    if duration <= 0 or request_timeout <= 0:
        raise ValueError("duration and request_timeout must be > 0")
    query_list = list(queries) if queries is not None else default_queries()
    if not query_list:
        raise ValueError("no queries to send")
    index = Path(index)
    deadline = ready_timeout + len(levels) * (duration + request_timeout + SLACK_S) + 60.0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="shopsearch-load-") as tmp:
        server = Server(index, workers=workers, server_args=list(server_args), folder=Path(tmp))
        try:
            log(f"starting {shlex.join(server.command[3:])} ({server.url})")
            server.start()
            ready = server.wait_ready(ready_timeout)
            log(f"ready: version {ready.get('version')}, {ready.get('products')} products")
            left = deadline - (time.monotonic() - started)
            try:
                results = asyncio.run(
                    asyncio.wait_for(
                        _measure(
                            server,
                            query_list,
                            levels,
                            duration=duration,
                            warmup=warmup,
                            k=k,
                            request_timeout=request_timeout,
                            backoff=backoff,
                            log=log,
                        ),
                        timeout=left,
                    )
                )
            except asyncio.TimeoutError:
                raise LoadTestError(
                    f"the run overran its hard deadline of {deadline:.0f} s"
                ) from None
        finally:
            code = server.stop()
            how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            log(f"server stopped ({how})")
    return LoadTestResult(
        levels=results,
        index=str(index),
        workers=workers,
        server_args=list(server_args),
        queries=len(query_list),
        query_source=query_source,
        duration_s=duration,
        warmup=warmup,
        k=k,
        backoff_s=backoff,
        machine=describe_machine(),
    )


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def _clients(levels: Sequence[int]) -> str:
    return f"{', '.join(map(str, levels))} clients" if levels else "no level"


def verdict(result: LoadTestResult) -> str:
    """The "sustainable rate" judgement printed under the table."""
    best = result.sustainable
    tried = max(r.concurrency for r in result.levels)
    if best is None:
        return (
            "sustainable: none of the levels ran without 503s and errors (shed at "
            f"{_clients(result.shed_above)}; errors at {_clients(result.errors_above)})"
        )
    line = (
        f"sustainable: {best.concurrency} concurrent client(s), {best.qps:.1f} QPS at p99 "
        f"{_ms(best.p99_ms)} ms with no 503s and no errors"
    )
    below = [
        r.concurrency for r in result.levels if r.concurrency < best.concurrency and not r.clean
    ]
    if below:  # noise: a lower level shed or failed while a higher one did not
        line += f" (though {_clients(below)} did not run clean)"
    if best.concurrency == tried:
        return line + f"; the highest level tried ({tried}): the limit may be higher"
    above = []
    if result.shed_above:
        above.append(f"shedding (503) at {_clients(result.shed_above)}")
    if result.errors_above:
        above.append(f"ERRORS at {_clients(result.errors_above)}")
    if not above:
        above.append("no shedding above it (a level above it had no 200s?)")
    return line + "; above it: " + "; ".join(above)


def render_table(result: LoadTestResult) -> str:
    lines = [
        "| clients | requests | QPS | p50 ms | p95 ms | p99 ms | shed (503) | errors "
        "| server p50 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result.levels:
        lines.append(
            f"| {r.concurrency} | {r.requests:,} | {r.qps:.1f} | {_ms(r.p50_ms)} "
            f"| {_ms(r.p95_ms)} | {_ms(r.p99_ms)} | {r.shed:,} | {r.errors:,} "
            f"| {_ms(r.server_p50_ms)} |"
        )
    kinds = [
        f"{r.concurrency} clients: "
        + ", ".join(f"{kind} x{n}" for kind, n in sorted(r.error_kinds.items()))
        for r in result.levels
        if r.error_kinds
    ]
    notes = [
        "",
        verdict(result),
        *(["errors by kind: " + "; ".join(kinds)] if kinds else []),
        "",
        f"machine: {result.machine}",
        f"index {result.index}: {result.workers} worker(s), server args "
        f"{shlex.join(result.server_args) or '(defaults)'}; {result.queries} queries "
        f"({result.query_source}) cycled, k={result.k}; {result.duration_s:g} s per level "
        f"after {result.warmup} warm-up searches; closed-loop clients on loopback (the client "
        f"shares the machine), 503 backoff min(Retry-After, {result.backoff_s:g} s)",
    ]
    return "\n".join(lines + notes)


def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a comma list of integers, got {text!r}"
        ) from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("levels must be integers >= 1")
    return levels


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Smoke run: --index DIR --concurrency-levels 1,4 --duration 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--index", type=Path, required=True, help="index folder to serve")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    parser.add_argument(
        "--concurrency-levels",
        type=_levels,
        default=list(DEFAULT_LEVELS),
        help="closed-loop clients per level, a comma list (default 1,2,4,8,16,32)",
    )
    parser.add_argument(
        "--duration", type=float, default=60.0, help="seconds per level (default 60)"
    )
    parser.add_argument(
        "--queries",
        type=Path,
        default=None,
        help="query TSV (query_id<TAB>query) or JSONL; default: the demo queries",
    )
    parser.add_argument("--k", type=int, default=10, help="results per search (default 10)")
    parser.add_argument(
        "--warmup", type=int, default=20, help="sequential warm-up searches (default 20)"
    )
    parser.add_argument(
        "--request-timeout", type=float, default=10.0, help="client timeout per request (s)"
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=120.0, help="seconds to wait for /ready"
    )
    parser.add_argument(
        "--backoff",
        type=float,
        default=0.05,
        help="cap (s) on the Retry-After sleep after a 503, and the pause after an error",
    )
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument(s) for search-cli serve, repeatable, in the = form: "
        "--server-arg=--queue=0 or --server-arg='--concurrency 2'",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)

    server_args = [part for arg in args.server_arg for part in shlex.split(arg)]
    if args.queries is not None:
        queries, source = load_queries(args.queries), args.queries.name
    else:
        queries, source = default_queries(), "demo queries"

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds through run_load_test's finally: the server stops

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        result = run_load_test(
            args.index,
            levels=args.concurrency_levels,
            duration=args.duration,
            workers=args.workers,
            queries=queries,
            query_source=source,
            server_args=server_args,
            warmup=args.warmup,
            k=args.k,
            request_timeout=args.request_timeout,
            ready_timeout=args.ready_timeout,
            backoff=args.backoff,
        )
    except LoadTestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the server was stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        print()
        print(render_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
