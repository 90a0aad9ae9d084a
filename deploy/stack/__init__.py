"""The local stack: a real Kafka broker and a real PostgreSQL server on loopback.

`up` is idempotent and writes `<home>/stack.env`; `down` stops what runs. A Kafka or
PostgreSQL given by the environment (an address other than the local one) is used as is
and never started or stopped; `up` only checks that it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import shlex
import sys
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from deploy import kafka_options
from deploy.settings import Settings
from deploy.stack import kafka, postgres, process
from deploy.stack.errors import StackError
from deploy.stack.topics import ensure_topics, record_limits_for

DEMO_DATABASE = "lattice_demo"  # `make demo`'s own database on the local server

__all__ = ["SERVICES", "StackError", "StackInfo", "down", "running", "up", "write_env"]


@dataclass(frozen=True)
class StackInfo:
    """Where the stack is and what `up` did."""

    kafka_bootstrap: str
    database_url: str
    kafka_started: bool
    postgres_started: bool
    topics_created: list[str]
    seconds: float


def _local_bootstrap(settings: Settings) -> str:
    return f"127.0.0.1:{settings.kafka_port}"


def _kafka_is_external(settings: Settings) -> bool:
    """Any broker list but the local broker's address (`localhost` names it too)."""
    local = {
        f"{host}:{port}"
        for host in ("127.0.0.1", "localhost")
        for port in (9092, settings.kafka_port)
    }
    return settings.kafka_bootstrap.strip() not in local


def _postgres_is_external(settings: Settings) -> bool:
    """A URL of the local server is not external, whichever database it names (the
    demo's shell names its own): `up` starts the server when it is down."""
    if not settings.database_url:
        return False
    try:
        where = urlsplit(settings.database_url)
        local = where.hostname in ("127.0.0.1", "localhost") and where.port == settings.pg_port
    except ValueError:  # not a URL we can read: whatever it names, it is not ours
        return True
    return not local


@contextlib.contextmanager
def _alone(home: Path) -> Iterator[None]:
    """One `stack up` or `down` at a time per home: two at once (`make demo` and `make
    test` in two terminals) would both resolve jars and start brokers, and the loser's
    broker would run on untracked. The lock goes with the process, however it ends."""
    try:
        home.mkdir(parents=True, exist_ok=True)
        held = (home / "stack.lock").open("a")
    except OSError as exc:
        raise StackError(f"cannot use the stack's folder {home}: {exc.strerror}") from None
    with held as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("waiting for another `lattice stack` command on this folder", file=sys.stderr)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def up(settings: Settings) -> StackInfo:
    """Start (or find) Kafka and PostgreSQL, provision topics, write stack.env."""
    with _alone(settings.home):
        return _up(settings)


def _up(settings: Settings) -> StackInfo:
    began = time.monotonic()
    home = settings.home
    local_kafka = not _kafka_is_external(settings)
    if not local_kafka:
        bootstrap, kafka_started = settings.kafka_bootstrap, False
        kafka.wait_ready(bootstrap, timeout=30)
    else:
        # The local broker listens in plaintext, whatever security a shell exported for a
        # cluster elsewhere (and stack.env says so, for the commands run against it).
        kafka_options.configure(
            settings.model_copy(update={"kafka_security_protocol": "PLAINTEXT"})
        )
        bootstrap = _local_bootstrap(settings)
        kafka_started = kafka.start(
            home, port=settings.kafka_port, partitions=settings.partitions, long_lived=True
        )
    if _postgres_is_external(settings):
        database_url, pg_started = settings.require_database_url(), False
        postgres.wait_answers(database_url, timeout=30)
    else:
        database_url = settings.database_url or postgres.url(settings.pg_port)
        pg_started = postgres.start(home, port=settings.pg_port)
        if database_url != postgres.url(settings.pg_port):  # another database of ours
            postgres.wait_answers(database_url, timeout=30)
    created = asyncio.run(
        ensure_topics(
            bootstrap,
            [settings.topic, settings.dlq_topic, settings.usage_topic],
            partitions=settings.partitions,
            replication_factor=settings.replication_factor,
            append_time=[settings.usage_topic],
            record_limits=record_limits_for(settings.topic, settings.max_body_bytes),
        )
    )
    recorded = database_url
    if not _postgres_is_external(settings) and urlsplit(database_url).path == f"/{DEMO_DATABASE}":
        # A shell that sourced the demo's env: the next `make demo` drops that database,
        # so what every later shell sources names the stack's own.
        recorded = postgres.url(settings.pg_port)
    values = {"LATTICE_KAFKA_BOOTSTRAP": bootstrap, "LATTICE_DATABASE_URL": recorded}
    if local_kafka:
        values["LATTICE_KAFKA_SECURITY_PROTOCOL"] = "PLAINTEXT"
    write_env(stack_env_path(home), values)
    return StackInfo(
        bootstrap, database_url, kafka_started, pg_started, created, time.monotonic() - began
    )


SERVICES = ("kafka", "postgresql")


def down(settings: Settings, only: Collection[str] = SERVICES) -> list[str]:
    """Stop the local services (of `only`) that run; return the names of those stopped."""
    with _alone(settings.home):
        return _down(settings, only)


def _down(settings: Settings, only: Collection[str]) -> list[str]:
    stopped, failures = [], []
    # Each is tried whatever happened to the other: a server that would not stop must not
    # leave the other running (a 1 GiB broker JVM, say) unnoticed.
    for name, stop in (("postgresql", postgres.stop), ("kafka", kafka.stop)):
        if name not in only:
            continue
        try:
            if stop(settings.home):
                stopped.append(name)
        except StackError as exc:
            failures.append(f"{name}: {exc}")
    if failures:
        done = f" (stopped: {', '.join(stopped)})" if stopped else ""
        raise StackError("could not stop " + "; ".join(failures) + done)
    return stopped


def running(settings: Settings) -> dict[str, bool]:
    """Whether each service runs: a local one's process, an external one's answer."""
    return {
        "kafka": (
            process.run_coroutine(lambda: kafka.broker_answers(settings.kafka_bootstrap))
            if _kafka_is_external(settings)
            else kafka.is_running(settings.home)
        ),
        "postgresql": (
            process.run_coroutine(lambda: postgres.login_problem(settings.require_database_url()))
            is None
            if _postgres_is_external(settings)
            else postgres.is_running(settings.home)
        ),
    }


def external(settings: Settings) -> dict[str, bool]:
    """Which services are given by the environment rather than run here."""
    return {"kafka": _kafka_is_external(settings), "postgresql": _postgres_is_external(settings)}


def write_env(path: Path, values: dict[str, str]) -> None:
    """Write `export` lines a shell sources: each value quoted (a URL's `&` would end the
    line), readable by the owner alone (a database URL may hold a password)."""
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(
        "".join(f"export {key}={shlex.quote(value)}\n" for key, value in values.items())
    )


def stack_env_path(home: Path) -> Path:
    """Where `up` writes the export lines."""
    return home / "stack.env"
