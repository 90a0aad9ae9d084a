"""Real processes the fault suite starts, kills and restarts: a private Kafka broker, a
private PostgreSQL server, receivers and projector processes.

The shared stack (9092 / 55432) is never touched: a scenario that kills a broker or a
database kills its own, started here on free ports under the test's temporary folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from deploy.stack import kafka, postgres
from deploy.stack.errors import StackError
from deploy.stack.kafka import KafkaPaths
from deploy.stack.postgres import PgPaths
from deploy.stack.process import running_pid
from tests.support.homes import share_kafka_jars
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
KAFKA_START_TIMEOUT = 120.0


@dataclass
class PrivateKafka:
    """A broker of this test session alone, which scenarios may SIGKILL."""

    home: Path
    port: int
    partitions: int = 3

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start it (or find it running) and wait until it answers."""
        try:
            kafka.start(
                self.home, port=self.port, partitions=self.partitions, timeout=KAFKA_START_TIMEOUT
            )
        except StackError as exc:
            if "formatting Kafka storage" not in str(exc):
                raise
            # The random cluster id starts with "-" one time in 64 and the storage tool
            # reads it as an option; a fresh id (formatting left nothing behind) works.
            kafka.start(
                self.home, port=self.port, partitions=self.partitions, timeout=KAFKA_START_TIMEOUT
            )

    def kill(self) -> None:
        """SIGKILL the JVM, as an OOM killer or a lost host would."""
        paths = KafkaPaths(self.home / "kafka")
        pid = running_pid(paths.pid, paths.owner)
        assert pid is not None, "the private broker is not running"
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while running_pid(paths.pid, paths.owner) is not None:
            assert time.monotonic() < deadline, "the broker survived SIGKILL"
            time.sleep(0.05)

    def stop(self) -> None:
        """A clean stop (SIGTERM)."""
        kafka.stop(self.home)

    def running(self) -> bool:
        return kafka.is_running(self.home)


@dataclass
class PrivatePostgres:
    """A PostgreSQL server of this test session alone, which scenarios may SIGKILL."""

    home: Path
    port: int

    def url(self, database: str = postgres.DATABASE) -> str:
        return postgres.url(self.port, database)

    def start(self) -> None:
        postgres.start(self.home, port=self.port)

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend at once (a crashed host)."""
        paths = PgPaths(self.home / "pg")
        pid = running_pid(paths.pid, paths.owner)
        assert pid is not None, "the private PostgreSQL is not running"
        server = psutil.Process(pid)
        family = [server, *server.children(recursive=True)]
        for proc in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(family, timeout=30)

    def stop(self) -> None:
        postgres.stop(self.home)


def start_private_kafka(home: Path) -> PrivateKafka:
    """A private broker on a free port pair (broker and controller)."""
    broker = PrivateKafka(share_kafka_jars(home), free_port(2))
    broker.start()
    return broker


def start_private_postgres(home: Path) -> PrivatePostgres:
    """A private PostgreSQL on a free port."""
    server = PrivatePostgres(home, free_port())
    server.start()
    return server


STARTED: list[Service] = []  # every service started in this test: killed at its end


@dataclass
class Service:
    """One child process (receiver or projector) with its log file; killable and restartable."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0
    exits: list[int] = field(default_factory=list)
    signalled: bool = False  # whether the current (or last) process was sent a signal by us

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        self.signalled = False
        STARTED.append(self)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def died_on_its_own(self) -> bool:
        """It has ended without a signal from us (a crash, or an exit nobody asked for)."""
        return self.proc is not None and not self.alive() and not self.signalled

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the whole process and wait for it to end."""
        assert self.proc is not None
        self.signalled = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        self.exits.append(self.proc.wait(timeout=60))
        if sig == signal.SIGKILL:
            self.kills += 1

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not ended within 30 s."""
        if not self.alive():
            return
        assert self.proc is not None
        self.signalled = True
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.exits.append(self.proc.wait(timeout=30))
        except subprocess.TimeoutExpired:
            self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def receiver(env: dict[str, str], log: Path, port: int) -> Service:
    """`lattice serve` on loopback as a child process."""
    argv = [sys.executable, "-m", "deploy.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return Service(f"receiver:{port}", argv, env, log)


def projector(env: dict[str, str], log: Path, *names: str) -> Service:
    """`lattice project [NAME ...]` as a child process."""
    argv = [sys.executable, "-m", "deploy.cli", "project", *names]
    return Service(f"projector:{log.stem}", argv, env, log)


def at_least(point: int) -> Callable[[int], bool]:
    """A predicate for `eventually`: a count reached `point`."""
    return lambda n: n >= point


async def wait_http_ready(
    base_url: str, service: Service, timeout: float = 60.0, path: str = "/healthz"
) -> None:
    """Poll GET `path` until it answers 200; fail early with the log if the process died."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=base_url, timeout=1.0) as client:
        while True:
            if not service.alive():
                raise AssertionError(f"{service.name} exited:\n{service.output()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(path)).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"{service.name} did not answer {path} in {timeout} s")
            await asyncio.sleep(0.1)
