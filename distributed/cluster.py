"""Connecting to Ray: an optional dependency, imported only by the commands that use it.

``--ray`` alone starts a Ray instance on this machine for the command's duration (bound to
127.0.0.1, no dashboard) and stops it at the end; ``--ray ADDRESS`` connects to a running
cluster (``ray start --head`` prints its address; ``auto`` finds one started on this machine).
"""

from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager
from typing import Any, Iterator

from shopsearch.errors import SearchError

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install -e ".[ray]"'
LOCAL = ("", "local")


def import_ray() -> Any:
    """The ``ray`` module, or a ``SearchError`` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise SearchError(
            f"--ray needs Ray, which is not installed; install it with `{INSTALL_HINT}`"
        ) from None
    return ray


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast, naming the address, when nothing listens there (``ray.init`` would retry
    for a long time before saying so)."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise SearchError(
            f"--ray {address!r} is not a Ray address; give HOST:PORT (from `ray start --head`), "
            f"'auto', or no address to run Ray on this machine"
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise SearchError(
            f"cannot reach the Ray cluster at {address} ({exc}); start one there with "
            f"`ray start --head`, or pass --ray without an address to run Ray on this machine"
        ) from None


def local_cpus(wanted: int) -> int:
    """Logical CPUs for a Ray started on this machine: what the workers want, at most the
    machine's cores."""
    return max(1, min(wanted, os.cpu_count() or 1))


@contextmanager
def ray_session(address: str | None, num_cpus: int) -> Iterator[Any]:
    """Ray, initialised for the ``with`` block: reused if the caller already initialised it
    (tests, a notebook), else started on this machine (``address`` empty or "local") with
    ``num_cpus`` logical CPUs, or connected to ``address``; shut down at the end if started
    here."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    address = (address or "").strip()
    try:
        if address in LOCAL:
            ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
        else:
            if address != "auto":
                _check_reachable(address)
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "this machine"
        raise SearchError(f"cannot start or reach Ray at {where}: {exc}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def cluster_cpus(ray: Any) -> float:
    """Logical CPUs the cluster has in all."""
    return float(ray.cluster_resources().get("CPU", 1.0))


def actor_cpus(ray: Any, workers: int) -> float:
    """CPUs each of ``workers`` actors asks for: one each, or an equal share when the cluster
    has fewer CPUs than workers (so that 4 workers still all start on a 2-core machine)."""
    return min(1.0, cluster_cpus(ray) / workers)
