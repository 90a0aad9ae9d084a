"""Before a projector process starts: wait for PostgreSQL and Kafka to answer.

Started before them (a container scheduled first, a host rebooting), `lattice project`
waits with one warning line per try instead of dying with a traceback, and SIGTERM or
Ctrl-C ends the wait cleanly. What waiting cannot fix (a wrong password, a database that
does not exist) ends it at once, in one line naming the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

import asyncpg
import structlog
from aiokafka.errors import KafkaError

from deploy.settings import ConfigError, Settings, database_location
from deploy.stack.topics import missing_topics
from projectors.failures import is_transient

log = structlog.get_logger("lattice.projector")

FIRST_RETRY_S = 0.5
MAX_RETRY_S = 10.0


async def _database(url: str) -> None:
    conn = await asyncpg.connect(url, timeout=10)
    await conn.close()


class MissingTopics(Exception):
    """The broker answers but does not have every topic the projections read (yet)."""


async def _kafka(bootstrap: str, topics: Sequence[str]) -> None:
    missing = await missing_topics(bootstrap, topics)
    if missing:
        # Provisioning may still be running (a compose or Kubernetes job next to us), or a
        # name is mistyped: say which, and wait, rather than aiokafka's traceback at 40 s.
        raise MissingTopics(
            f"no topic {', '.join(missing)} on the broker yet (create it, e.g. with the "
            "provisioning job or `lattice stack up` locally, or check LATTICE_TOPIC and "
            "LATTICE_USAGE_TOPIC)"
        )


def _kafka_down(exc: BaseException) -> bool:
    # Any KafkaError: besides a refused connection, aiokafka raises a bare one when the
    # bootstrap address answers but none of the brokers its metadata names does (a broker
    # restarting, an advertised listener not reachable yet). Each try logs its error.
    return isinstance(exc, KafkaError | OSError | TimeoutError | MissingTopics)


async def until_up(
    what: str,
    attempt: Callable[[], Awaitable[None]],
    transient: Callable[[BaseException], bool],
    stop: asyncio.Event,
) -> bool:
    """Run `attempt` until it succeeds (True) or `stop` is set (False), waiting longer
    after each transient failure; any other failure is raised at once."""
    delay = FIRST_RETRY_S
    while not stop.is_set():
        try:
            await attempt()
            return True
        except Exception as exc:
            if not transient(exc):
                raise
            log.warning(f"waiting for {what}", error=f"{type(exc).__name__}: {exc}", retry_in=delay)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await stop.wait()
        delay = min(delay * 2, MAX_RETRY_S)
    return False


async def dependencies_up(
    settings: Settings, stop: asyncio.Event, topics: Sequence[str] = ()
) -> bool:
    """Wait until PostgreSQL and Kafka both answer and Kafka has `topics`; False if
    `stop` (the process's SIGTERM/SIGINT) came first."""
    url = settings.require_database_url()
    where = database_location(url)
    try:
        up = await until_up(f"PostgreSQL at {where}", lambda: _database(url), is_transient, stop)
    except (asyncpg.PostgresError, ValueError) as exc:
        raise ConfigError(f"PostgreSQL at {where} refused us: {exc}") from None
    return up and await until_up(
        f"Kafka at {settings.kafka_bootstrap}",
        lambda: _kafka(settings.kafka_bootstrap, topics),
        _kafka_down,
        stop,
    )
