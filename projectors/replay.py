"""`lattice replay NAME`: rebuild a projection into a shadow schema, then swap it in.

From the beginning the shadow starts empty. From an offset or a time it starts as a copy
of the live tables (and their positions, read in the same snapshot) and re-applies the
log from that point, which projections' idempotent, out-of-order-safe stores allow.
The rebuild consumes with its own positions (`<name>.replay` in `lattice.offsets`), so
the live runner keeps serving; when the rebuild reaches the head of the log, one
transaction swaps the tables and replaces the live positions (see `shadow.py`). The live
runner's next compare-and-set then fails once and it re-seeks to the rebuilt positions.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError

from deploy import kafka_options
from deploy.settings import Settings
from projectors import offsets, shadow
from projectors.batch import BatchApplier
from projectors.deadletter import DeadLetterSink, UnsentDeadLetters
from projectors.hydration_gate import Hydrate
from projectors.intake import stop_consumer
from projectors.migrate import MigrationError
from projectors.progress import Progress
from projectors.replay_catch_up import CatchUp
from projectors.replay_lock import LockTaken, ReplayLock
from projectors.replay_start import ReplayError, StartAt, check_offset, prepare
from projectors.replay_swap import swap_in
from projectors.stopping import Abandoned, unless_stopped
from projectors.topic_partitions import UnknownTopic, partitions_of

T = TypeVar("T")
INTERRUPTED = "replay interrupted; the live tables are unchanged"

log = structlog.get_logger("lattice.replay")
# Swaps backed out because the live runner was past the rebuild; the last one swaps anyway
# (the live runner then applies those records again, its rows back within a batch).
SWAP_ROUNDS = 5


@dataclass(frozen=True)
class ReplayResult:
    """What a finished replay did."""

    records: int
    seconds: float
    tables: list[str]
    positions: dict[TopicPartition, int]


async def replay(
    settings: Settings,
    projection: Any,
    start: StartAt,
    dead_letters: DeadLetterSink,
    *,
    view_owners: Sequence[Any] = (),
    hydrate: Hydrate | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    stop: asyncio.Event | None = None,
) -> ReplayResult:
    """Rebuild `projection` from `start` and swap it in; raise ReplayError if it cannot."""
    name = projection.name
    schema, key = shadow.shadow_schema(name), shadow.replay_key(name)
    stop = stop or asyncio.Event()
    lock = ReplayLock(settings.require_database_url(), name)
    lock_conn = await lock.take()
    pool: asyncpg.Pool | None = None
    try:
        pool = await asyncpg.create_pool(settings.require_database_url(), min_size=1, max_size=2)
        consumer = AIOKafkaConsumer(
            **kafka_options.options(),
            bootstrap_servers=settings.kafka_bootstrap,
            enable_auto_commit=False,
            group_id=None,
            client_id=f"lattice-replay-{name}",
            isolation_level="read_committed",  # as the live runner reads
            # Records gone from under a rebuild (deleted by a retention): say so, never jump.
            auto_offset_reset="none",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
        )
    except BaseException:
        # The pool refused (max_connections, the role's limit), a Kafka setting the client
        # cannot use, or cancelled: the lock goes too, or the next try in this process
        # would be told another replay is running. Their own errors matter less.
        if pool is not None:
            with contextlib.suppress(Exception):
                await pool.close()
        with contextlib.suppress(Exception):
            await lock.release()
        raise
    finished = False
    try:
        await consumer.start()
        tps = await _partitions(consumer, projection.topics(settings))
        # A poison record goes there: missing, its send would wait for it without end.
        await _partitions(consumer, [settings.dlq_topic])
        consumer.assign(tps)
        await check_offset(consumer, settings, tps, start)
        # Migrating waits for readers, copying the live tables can take minutes: a stop
        # cancels either (and its statement).
        seeds = await unless_stopped(
            prepare(lock_conn, consumer, projection, settings, tps, start, schema),
            stop,
            "stopped while the rebuild was prepared",
        )
        async with lock_conn.transaction():
            await offsets.compare_and_set(lock_conn, key, seeds)
        positions = {tp: seed.next_offset for tp, seed in seeds.items()}
        applier = BatchApplier(
            projection,
            pool,
            UnsentDeadLetters(dead_letters, pool),
            schema=schema,
            projector_key=key,
            retries=settings.poison_retries,
            hydrate=hydrate,
            stop=stop,
            event_log=settings.topic,
        )
        started = time.monotonic()
        catching_up = CatchUp(consumer, applier, settings, lock, stop, on_progress, started)
        done = await catching_up.run(positions)
        for attempt in range(1, SWAP_ROUNDS + 1):
            # To the log end as it is now, holding no lock: a live runner (its own batch
            # and commit behind the log) is then rarely past the rebuild at the swap.
            done += await catching_up.run(positions, to_the_end=True)
            try:
                last = attempt == SWAP_ROUNDS
                swapped = await swap_in(lock, projection, schema, view_owners, stop, last)
                break
            except shadow.ShadowBehind:
                log.info("swap behind the live runner; catching up", projector=name)
        else:
            raise AssertionError("the last round swaps whatever the live runner did")
        finished = True
        seconds = time.monotonic() - started
        log.info(
            "replay swapped in",
            projector=name,
            records=done,
            tables=swapped,
            seconds=round(seconds, 1),
        )
        return ReplayResult(done, seconds, swapped, dict(positions))
    except MigrationError as exc:
        raise ReplayError(f"{exc}; the live tables are unchanged") from None
    except Abandoned:
        raise ReplayError(INTERRUPTED) from None
    except OffsetOutOfRangeError as exc:
        raise ReplayError(
            f"records the rebuild needs are gone from the log ({exc}): a retention deleted "
            "them, or the topic was created again; the live tables are unchanged "
            "(--from-beginning rebuilds from what the log holds)"
        ) from None
    except offsets.PositionConflict as exc:
        raise ReplayError(
            f"the rebuild's positions changed under it ({exc}); the live tables are unchanged"
        ) from None
    finally:
        await stop_consumer(consumer)
        await pool.close()
        if lock.held and not finished:
            await _discard(lock, schema, key)
        await lock.release()  # also releases the session's advisory lock


async def _discard(lock: ReplayLock, schema: str, key: str) -> None:
    """Drop an unfinished rebuild (the live tables never changed)."""
    try:
        conn = await lock.session()
        await conn.execute(f"DROP SCHEMA IF EXISTS {shadow.ident(schema)} CASCADE")
        await offsets.forget(conn, key)
    except LockTaken:
        pass  # another replay's shadow now: not ours to drop
    except Exception as exc:  # the original error matters more; say what is left behind
        log.warning("could not drop the unfinished replay", schema=schema, error=str(exc))


async def _partitions(consumer: AIOKafkaConsumer, topics: Sequence[str]) -> list[TopicPartition]:
    try:
        return await partitions_of(consumer, topics)
    except UnknownTopic as exc:
        raise ReplayError(str(exc)) from None
