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
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from deploy.settings import Settings
from projectors import offsets, shadow
from projectors.base import to_record
from projectors.batch import Abandoned, BatchApplier, Hydrate
from projectors.deadletter import DeadLetterSink, UnsentDeadLetters
from projectors.failures import is_transient
from projectors.intake import stop_consumer
from projectors.migrate import MigrationError, migrate
from projectors.progress import Progress, report_progress
from projectors.replay_lock import LockTaken, ReplayLock
from projectors.replay_start import ReplayError, StartAt, check_offset, start_positions
from projectors.topic_partitions import UnknownTopic, partitions_of

log = structlog.get_logger("lattice.replay")
MAX_BACKOFF_S = 10.0
SWAP_ATTEMPTS = 200
# A swap cut off by these is undone by the server, and tried again on a new session.
DATABASE_AWAY = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting, terminated
)
# Times the swap waits for the rebuild to catch up with a live runner that got ahead.
CATCH_UP_ROUNDS = 5


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
    pool = await asyncpg.create_pool(settings.require_database_url(), min_size=1, max_size=2)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        group_id=None,
        client_id=f"lattice-replay-{name}",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    finished = False
    try:
        await consumer.start()
        tps = await _partitions(consumer, projection.topics(settings))
        consumer.assign(tps)
        await check_offset(consumer, settings, tps, start)
        await migrate(lock_conn, [projection])  # the live schema is current before we copy
        try:  # live tables newer than this code: refuse now, not after hours of rebuilding
            async with lock_conn.transaction():
                await shadow.refuse_newer_migrations(lock_conn, projection)
        except shadow.SwapError as exc:
            raise ReplayError(str(exc)) from None
        tables = await shadow.build(lock_conn, projection, schema)
        await offsets.forget(lock_conn, key)
        seeds = await start_positions(
            lock_conn, consumer, projection, settings, tps, start, schema, tables
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
        )
        started = time.monotonic()
        catching_up = _CatchUp(consumer, applier, settings, lock, stop, on_progress, started)
        done = await catching_up.run(positions)
        rounds = 0
        while True:
            try:
                behind_ok = rounds == CATCH_UP_ROUNDS
                swapped = await _swap(lock, projection, schema, view_owners, stop, behind_ok)
                break
            except shadow.ShadowBehind as behind:
                # The live runner applied what the rebuild has not yet: catch up to it
                # first, or its readers would see those rows vanish until it re-applied
                # them. It keeps applying meanwhile; after a few rounds, swap anyway.
                rounds += 1
                log.info("swap catching up with the live runner", projector=name, round=rounds)
                done += await catching_up.run(positions, floor=behind.positions)
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
        raise ReplayError("replay interrupted; the live tables are unchanged") from None
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


async def _swap(
    lock: ReplayLock,
    projection: Any,
    schema: str,
    view_owners: Sequence[Any],
    stop: asyncio.Event,
    behind_ok: bool,
) -> list[str]:
    """Swap, backing off while readers hold the tables (never making them wait long) and
    while the database is away (the swap is one transaction: undone if cut off)."""
    delay = 0.05
    for attempt in range(1, SWAP_ATTEMPTS + 1):
        try:
            conn = await lock.session()
            async with conn.transaction():
                return await shadow.swap(conn, projection, schema, view_owners, behind_ok=behind_ok)
        except (shadow.ShadowBehind, ReplayError):
            raise
        except shadow.SwapError as exc:
            raise ReplayError(str(exc)) from None
        except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError) as exc:
            if attempt == SWAP_ATTEMPTS or stop.is_set():
                raise ReplayError(
                    f"could not take the locks to swap {projection.name} in after {attempt} "
                    f"attempts ({exc}); long-running queries hold its tables"
                ) from exc
            log.info("swap waiting for readers", projector=projection.name, attempt=attempt)
        except Exception as exc:
            # Only the database going away is waited out: anything else (a view someone
            # built that cannot be created again) fails the same way at every try.
            if not isinstance(exc, DATABASE_AWAY):
                raise ReplayError(
                    f"the swap of {projection.name} failed and was undone "
                    f"({type(exc).__name__}: {exc}); the live tables are unchanged"
                ) from exc
            if attempt == SWAP_ATTEMPTS or stop.is_set():
                raise
            await lock.lost()
            log.warning("database unavailable at the swap; retrying", error=str(exc))
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")


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


@dataclass
class _CatchUp:
    """Applies the log to the shadow with the rebuild's own positions."""

    consumer: AIOKafkaConsumer
    applier: BatchApplier
    settings: Settings
    lock: ReplayLock
    stop: asyncio.Event
    on_progress: Callable[[Progress], None] | None
    started: float

    async def run(
        self,
        positions: dict[TopicPartition, int],
        floor: Mapping[TopicPartition, int] | None = None,
    ) -> int:
        """Apply batches until every partition reached the log end (less than a batch
        left) and at least `floor`; returns records done."""
        consumer, settings = self.consumer, self.settings
        for tp, offset in positions.items():
            consumer.seek(tp, offset)
        first = dict(positions)
        ends: Mapping[TopicPartition, int] = await consumer.end_offsets(list(positions))
        backoff, last_report = 0.5, 0.0
        while True:
            behind = [tp for tp in positions if positions[tp] < ends[tp]]
            if not behind:
                fresh = await consumer.end_offsets(list(positions))
                # Swap once what is left is less than a batch: the live runner, re-seeking
                # to the rebuilt positions, applies the rest within its next batch.
                short = floor is not None and any(
                    positions[tp] < floor.get(tp, 0) for tp in positions
                )
                left = sum(fresh[tp] - positions[tp] for tp in positions)
                if not short and left <= settings.projector_batch_size:
                    report_progress(
                        self.on_progress, positions, first, ends, self.started, force=True
                    )
                    return sum(positions[tp] - first[tp] for tp in positions)
                ends = fresh
                continue
            if self.stop.is_set():
                raise ReplayError("replay interrupted; the live tables are unchanged")
            fetched = await consumer.getmany(
                *behind,
                timeout_ms=settings.projector_batch_wait_ms,
                max_records=settings.projector_batch_size,
            )
            batch = {
                tp: [to_record(m) for m in msgs if m.offset >= positions[tp]]
                for tp, msgs in fetched.items()
            }
            batch = {tp: recs for tp, recs in batch.items() if recs}
            if not batch:
                continue
            try:
                await self.lock.session()  # still ours (a lost session: taken again)
                await self.applier.commit(batch, {tp: positions[tp] for tp in batch})
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("database unavailable during replay; retrying", error=str(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                for tp in batch:
                    consumer.seek(tp, positions[tp])
                continue
            backoff = 0.5
            for tp, recs in batch.items():
                positions[tp] = recs[-1].offset + 1
            if time.monotonic() - last_report >= 1.0:
                last_report = time.monotonic()
                report_progress(self.on_progress, positions, first, ends, self.started)
