"""How `lattice serve` runs uvicorn: one process, or N workers each on its own socket.

uvicorn's own supervisor binds one listening socket and shares it between the workers.
Whichever worker wakes first then accepts every connection that is waiting, so a burst
of new connections (a load balancer filling its pool, Stripe's deliveries after an
outage) can settle mostly on one worker while the other idles: a benchmark with 32
keep-alive connections saw 23 on one worker and 9 on the other, and the busy one set
the pace. Here each worker binds the address itself with SO_REUSEPORT, and the kernel
spreads new connections across the workers' sockets by a hash of the client's address.

The supervisor restarts a worker that dies, stops everything when one cannot start
(the same failure would repeat), and on SIGINT or SIGTERM asks each worker to shut down
gracefully (answer what is in flight, flush the producer) and waits for them. If the
supervisor itself is killed, the workers get SIGTERM from the kernel and shut down the
same way, rather than serving on as orphans that hold the port.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import socket
import sys
import threading
from multiprocessing.context import SpawnProcess
from types import FrameType
from typing import Any

import structlog
import uvicorn
from uvicorn.config import STARTUP_FAILURE

from deploy.settings import ConfigError
from ingest.http import OneWriteHttpToolsProtocol

log = structlog.get_logger("ingest.workers")

_spawn = multiprocessing.get_context("spawn")
POLL_SECONDS = 0.5
PR_SET_PDEATHSIG = 1  # prctl(2)


def serve(app: Any, *, host: str, port: int, workers: int = 1) -> int:
    """Serve `app` (an ASGI app, or with workers a "module:factory" path) until stopped."""
    config = uvicorn.Config(
        app,
        factory=isinstance(app, str),
        host=host,
        port=port,
        access_log=False,  # the app writes one line per request itself
        lifespan="on",
        # Nothing here reads the client's address, so X-Forwarded-* need no rewriting
        # (a middleware less per request), and the answer does not name the server.
        proxy_headers=False,
        server_header=False,
        http=OneWriteHttpToolsProtocol,  # httptools, one write per answer
    )
    if workers == 1:
        server = uvicorn.Server(config)
        server.run()
        return 0 if server.started else STARTUP_FAILURE
    if not isinstance(app, str):
        raise ConfigError("several workers need the app as a 'module:factory' path")
    return run_workers(config, workers)


def _address(host: str, port: int) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    return family, tuple(address)


def check_address(host: str, port: int) -> None:
    """Raise `ConfigError` unless `host:port` is free to listen on (before any worker)."""
    if port == 0:
        raise ConfigError("--port 0 with several workers: each would listen on another port")
    try:
        family, address = _address(host, port)
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def reuseport_listener(host: str, port: int, backlog: int) -> socket.socket:
    """A listening socket on `host:port` that other workers' sockets may share."""
    family, address = _address(host, port)
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind(address)
    listener.listen(backlog)
    listener.set_inheritable(False)
    return listener


def _die_with(supervisor: int) -> None:
    """Have Linux send this worker SIGTERM when the supervisor dies, even by SIGKILL, so
    that no orphan keeps serving (and holding the port) after it."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before that took effect
        raise SystemExit(0)


def _worker(config: uvicorn.Config, supervisor: int) -> None:
    """One worker process: its own socket, then uvicorn's server until told to stop."""
    _die_with(supervisor)
    config.configure_logging()
    try:
        listener = reuseport_listener(config.host, config.port, config.backlog)
    except OSError as exc:
        log.error("worker_cannot_listen", host=config.host, port=config.port, error=str(exc))
        raise SystemExit(STARTUP_FAILURE) from None
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C reaches the whole process group
        uvicorn.Server(config).run(sockets=[listener])


def _start(config: uvicorn.Config) -> SpawnProcess:
    worker = _spawn.Process(target=_worker, args=(config, os.getpid()), name="lattice-serve-worker")
    worker.start()
    return worker


def run_workers(config: uvicorn.Config, count: int) -> int:
    """Run `count` workers until SIGINT/SIGTERM; the exit status (1 if one could not start)."""
    check_address(config.host, config.port)
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    workers = [_start(config) for _ in range(count)]
    log.info("workers_started", pids=[w.pid for w in workers], host=config.host, port=config.port)
    status = 0
    while not stopping.wait(POLL_SECONDS):
        for index, worker in enumerate(workers):
            if worker.is_alive():
                continue
            if worker.exitcode == STARTUP_FAILURE:
                log.error("worker_failed_to_start", pid=worker.pid)
                status = 1
                stopping.set()
                break
            log.warning("worker_died", pid=worker.pid, exitcode=worker.exitcode)
            workers[index] = _start(config)
    for worker in workers:
        if worker.is_alive() and worker.pid is not None:
            os.kill(worker.pid, signal.SIGTERM)
    for worker in workers:
        worker.join()
    log.info("workers_stopped")
    return status
