"""How `lattice serve` runs uvicorn: one process, or N workers each on its own socket.

uvicorn's own supervisor binds one listening socket and shares it between the workers.
Whichever worker wakes first then accepts every connection that is waiting, so a burst
of new connections (a load balancer filling its pool, Stripe's deliveries after an
outage) can settle mostly on one worker while the other idles: a benchmark with 32
keep-alive connections saw 23 on one worker and 9 on the other, and the busy one set
the pace. Here each worker binds the address itself with SO_REUSEPORT, and the kernel
spreads new connections across the workers' sockets by a hash of the client's address.

The supervisor restarts a worker that dies (with a growing pause if it keeps dying before
it serves), stops everything when the first workers cannot start (the settings, the code or
the port are wrong, and every restart would fail the same way), and on SIGINT or SIGTERM
asks each worker to shut down gracefully (answer what is in flight, flush the producer),
waits up to a minute, and kills what is left then or at a second signal. If the
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
import tempfile
import time
from collections.abc import Iterator
from multiprocessing.context import SpawnProcess
from types import FrameType
from typing import Any

import structlog
import uvicorn
from uvicorn.config import STARTUP_FAILURE

from deploy.logs import configure_logging
from deploy.settings import ConfigError
from ingest.http import OneWriteHttpToolsProtocol
from ingest.metrics import MULTIPROCESS_DIR

log = structlog.get_logger("ingest.workers")

_spawn = multiprocessing.get_context("spawn")
POLL_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0  # between restarts of a worker that keeps failing to start
DRAIN_SECONDS = 60.0  # how long stopping workers may take before they are killed
PR_SET_PDEATHSIG = 1  # prctl(2)
# uvicorn's own lines (started, stopping) go to the root logger's handler, which
# `configure_logging` gives our format: JSON lines like every other, unless at a terminal.
UVICORN_LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {"uvicorn": {"level": "INFO", "handlers": [], "propagate": True}},
}


def serve(app: Any, *, host: str, port: int, workers: int = 1) -> int:
    """Serve `app` (an ASGI app, or with workers a "module:factory" path) until stopped."""
    config = uvicorn.Config(
        app,
        factory=isinstance(app, str),
        host=host,
        port=port,
        access_log=False,  # the app writes one line per request itself
        log_config=UVICORN_LOGGING,
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
        return 0 if server.started else 1  # as with several workers (uvicorn's own: 3)
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


class _Server(uvicorn.Server):
    """uvicorn's server, raising a flag the supervisor reads once it is serving."""

    def __init__(self, config: uvicorn.Config, ready: Any) -> None:
        super().__init__(config)
        self._ready = ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._ready.value = 1


def _worker(config: uvicorn.Config, supervisor: int, ready: Any) -> None:
    """One worker process: its own socket, then uvicorn's server until told to stop."""
    # A spawned process starts with logging unconfigured: ours first (JSON lines on
    # stderr), so that nothing it says before the app factory runs is plain text on stdout.
    configure_logging()
    _die_with(supervisor)
    config.configure_logging()
    try:
        listener = reuseport_listener(config.host, config.port, config.backlog)
    except OSError as exc:
        log.error("worker_cannot_listen", host=config.host, port=config.port, error=str(exc))
        raise SystemExit(STARTUP_FAILURE) from None
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C reaches the whole process group
        _Server(config, ready).run(sockets=[listener])


def _start(config: uvicorn.Config) -> tuple[SpawnProcess, Any]:
    ready = _spawn.RawValue("b", 0)
    worker = _spawn.Process(
        target=_worker, args=(config, os.getpid(), ready), name="lattice-serve-worker"
    )
    worker.start()
    return worker, ready


class _Slot:
    """One worker's place: its current process, whether it got to serve, how it fared."""

    def __init__(self, config: uvicorn.Config, *, first: bool) -> None:
        self.process: SpawnProcess | None = None
        self.ready: Any = None
        self.first = first  # one of the workers started with the command
        self.failed_starts = 0  # in a row
        self.due = 0.0  # when to start it again, after a death
        self.start(config)

    def start(self, config: uvicorn.Config) -> None:
        self.process, self.ready = _start(config)

    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def served(self) -> bool:
        return bool(self.ready is not None and self.ready.value)


def run_workers(config: uvicorn.Config, count: int) -> int:
    """Run `count` workers until SIGINT/SIGTERM; the exit status (1 if they could not start)."""
    check_address(config.host, config.port)
    signals: list[int] = []  # only appended to by the handler: nothing in it can deadlock

    def note(signum: int, frame: FrameType | None) -> None:
        signals.append(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, note)
    slots: list[_Slot] = []
    with _shared_metrics():
        try:
            slots.extend(_Slot(config, first=True) for _ in range(count))
            pids = [slot.process.pid for slot in slots if slot.process]
            log.info("workers_started", pids=pids, host=config.host, port=config.port)
            return _watch(config, slots, signals)
        finally:
            _stop(slots, signals)


@contextlib.contextmanager
def _shared_metrics() -> Iterator[None]:
    """A directory where the workers keep their metrics, so that any worker's /metrics
    sums them all (`ingest.metrics`); one given in the environment is used as it is."""
    if os.environ.get(MULTIPROCESS_DIR):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="lattice-metrics-") as path:
        os.environ[MULTIPROCESS_DIR] = path
        try:
            yield
        finally:
            del os.environ[MULTIPROCESS_DIR]


def _watch(config: uvicorn.Config, slots: list[_Slot], signals: list[int]) -> int:
    """Keep the workers running until a signal (0) or until the first ones cannot start (1)."""
    while not signals:
        time.sleep(POLL_SECONDS)
        if signals:
            # A stop for the whole process group (Ctrl-C, systemd, Kubernetes) reaches
            # the workers too: those that ended meanwhile did not die, they were stopped.
            break
        now = time.monotonic()
        for slot in slots:
            worker = slot.process
            if worker is None:  # waiting to be started again
                if now >= slot.due:
                    slot.start(config)
                continue
            if worker.is_alive():
                if slot.served():
                    slot.failed_starts, slot.first = 0, False
                continue
            failed_to_start = worker.exitcode == STARTUP_FAILURE or not slot.served()
            if failed_to_start and slot.first:
                # The command's own workers cannot start: settings, code or port are
                # broken, and every restart would fail the same way.
                log.error("worker_failed_to_start", pid=worker.pid, exitcode=worker.exitcode)
                return 1
            slot.failed_starts = slot.failed_starts + 1 if failed_to_start else 0
            wait = min(MAX_BACKOFF_SECONDS, POLL_SECONDS * (2**slot.failed_starts - 1))
            log.warning("worker_died", pid=worker.pid, exitcode=worker.exitcode, restart_in=wait)
            slot.process, slot.due = None, now + wait
    return 0


def _stop(slots: list[_Slot], signals: list[int]) -> None:
    """SIGTERM every worker and wait for them to drain; SIGKILL those still running after
    DRAIN_SECONDS, or at once on another SIGINT/SIGTERM."""
    asked = len(signals)
    for slot in slots:
        if slot.alive() and slot.process and slot.process.pid is not None:
            os.kill(slot.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + DRAIN_SECONDS
    while any(slot.alive() for slot in slots):
        if len(signals) > asked or time.monotonic() > deadline:
            for slot in slots:
                if slot.alive() and slot.process:
                    slot.process.kill()
            break
        time.sleep(0.05)
    for slot in slots:
        if slot.process is not None:
            slot.process.join()
    log.info("workers_stopped")
