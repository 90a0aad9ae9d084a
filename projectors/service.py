"""`lattice project`: run several projections in one process, sharing one pool and one
dead-letter producer, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import gc
import signal
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer

from deploy import kafka_options
from deploy.settings import Settings
from ingest.publisher import COMPRESSION
from projectors.deadletter import KafkaDeadLetters, UnsentDeadLetters
from projectors.hydration_gate import Hydrate
from projectors.metrics import RuntimeMetrics
from projectors.migrate import migrate
from projectors.runner import ProjectionRunner
from projectors.stopping import Abandoned, unless_stopped

log = structlog.get_logger("lattice.projector")

# Far above any letter the broker takes (1 MiB by default): only the broker's own limit,
# over the compressed batch, decides.
DEAD_LETTER_MAX_BYTES = 64 * 1024 * 1024


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a projector process (call once, at
    start). A batch allocates hundreds of thousands of short-lived objects (parsed JSON,
    records, rows) that reference counting frees; with the default threshold the collector
    would also walk every long-lived object many times a batch (~20 % of the CPU)."""
    gc.collect()
    gc.freeze()  # everything imported so far is never garbage: stop scanning it
    gc.set_threshold(100_000, 50, 1000)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release a connection without asyncpg's reset query (RESET ALL, UNLISTEN, ...): a
    round trip per batch, and nothing here sets session state (settings are SET LOCAL).
    An open transaction is still rolled back by asyncpg before this is called."""


@asynccontextmanager
async def database(settings: Settings, *, size: int = 4) -> AsyncIterator[asyncpg.Pool]:
    """The process's one asyncpg pool."""
    pool = await asyncpg.create_pool(
        settings.require_database_url(),
        min_size=1,
        max_size=size,
        # A replay swap changes the tables under cached plans; fresh plans are cheap here.
        max_inactive_connection_lifetime=60,
        reset=_keep_session,
    )
    try:
        yield pool
    finally:
        await pool.close()


@asynccontextmanager
async def dead_letter_producer(settings: Settings) -> AsyncIterator[KafkaDeadLetters]:
    """An idempotent acks=all producer to the dead-letter topic."""
    producer = AIOKafkaProducer(
        **kafka_options.options(),
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        client_id="lattice-deadletters",
        # A letter is a record the log took (compressed) plus ~2 KB of headers, compressed
        # the same way: the broker judges its size. aiokafka's own check counts the value
        # uncompressed against this, and would refuse a letter for a 1 MiB body the
        # receiver appended; its refusal would stop the runner on that record for ever.
        compression_type=COMPRESSION,
        max_request_size=DEAD_LETTER_MAX_BYTES,
    )
    try:
        await producer.start()
        yield KafkaDeadLetters(producer, settings.dlq_topic)
    finally:
        await producer.stop()


async def run_projections(
    settings: Settings,
    projections: Sequence[Any],
    *,
    hydrate: Hydrate | None = None,
    stop: asyncio.Event | None = None,
    metrics: RuntimeMetrics | None = None,
    handle_signals: bool = True,
    ready: threading.Event | None = None,
) -> None:
    """Migrate, then run every projection until `stop` is set (or SIGTERM/SIGINT).
    `ready` is set once every runner has started its consumer, and cleared when it stops."""
    stop = stop or asyncio.Event()
    if handle_signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    metrics = metrics or RuntimeMetrics()
    async with database(settings, size=len(projections) + 2) as pool:
        conn = await asyncpg.connect(settings.require_database_url())
        try:
            # A migration can wait for a lock a reader holds: SIGTERM must still stop it.
            applied = await unless_stopped(
                migrate(conn, projections), stop, "stopped while the migrations waited"
            )
        except Abandoned as exc:
            log.info("projectors stopped before they started", why=str(exc))
            return
        finally:
            await conn.close()
        if applied:
            log.info("migrations applied", applied=applied)
        async with dead_letter_producer(settings) as producer:
            dead_letters = UnsentDeadLetters(producer, pool)
            runners = [
                ProjectionRunner(
                    p, settings, pool, dead_letters, hydrate=hydrate, metrics=metrics, stop=stop
                )
                for p in projections
            ]
            tasks = [asyncio.create_task(r.run(), name=f"projector:{r.name}") for r in runners]
            # Not one of `tasks`: a runner failing before it started must end the wait.
            watcher = asyncio.create_task(_set_when_started(runners, ready, stop))
            try:
                # One failing projector stops the process: a supervisor restarts it whole.
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    task.result()
            finally:
                watcher.cancel()
                if ready is not None:
                    ready.clear()
                stop.set()
                await asyncio.gather(*tasks, watcher, return_exceptions=True)


async def _set_when_started(
    runners: Sequence[ProjectionRunner], ready: threading.Event | None, stop: asyncio.Event
) -> None:
    """Set `ready` once every runner has started its consumer, and clear it as soon as
    the process begins to stop (cancelled on the way out)."""
    if ready is None:
        return
    await asyncio.gather(*(r.started.wait() for r in runners))
    if not stop.is_set():
        ready.set()
    await stop.wait()
    ready.clear()
