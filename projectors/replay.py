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
from projectors.batch import BatchApplier, Hydrate
from projectors.deadletter import DeadLetterSink, UnsentDeadLetters
from projectors.failures import is_transient
from projectors.intake import stop_consumer
from projectors.migrate import migrate
from projectors.progress import Progress, report_progress
from projectors.replay_start import ReplayError, StartAt, check_offset, start_positions
from projectors.topic_partitions import UnknownTopic, partitions_of

log = structlog.get_logger("lattice.replay")
# Any constant works; the projection's name is the second key.
REPLAY_LOCK = 0x1A77
MAX_BACKOFF_S = 10.0
SWAP_ATTEMPTS = 200
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
    lock_conn = await asyncpg.connect(settings.require_database_url())
    pool = await asyncpg.create_pool(settings.require_database_url(), min_size=1, max_size=2)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        group_id=None,
        client_id=f"lattice-replay-{name}",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    owner = finished = False
    try:
        owner = await lock_conn.fetchval(
            "SELECT pg_try_advisory_lock($1, hashtext($2))", REPLAY_LOCK, name
        )
        if not owner:
            raise ReplayError(f"a replay of {name} is already running")
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
        done = await _catch_up(consumer, applier, settings, positions, stop, on_progress, started)
        rounds = 0
        while True:
            try:
                behind_ok = rounds == CATCH_UP_ROUNDS
                swapped = await _swap(lock_conn, projection, schema, view_owners, stop, behind_ok)
                break
            except shadow.ShadowBehind as behind:
                # The live runner applied what the rebuild has not yet: catch up to it
                # first, or its readers would see those rows vanish until it re-applied
                # them. It keeps applying meanwhile; after a few rounds, swap anyway.
                rounds += 1
                log.info("swap catching up with the live runner", projector=name, round=rounds)
                done += await _catch_up(
                    consumer,
                    applier,
                    settings,
                    positions,
                    stop,
                    on_progress,
                    started,
                    floor=behind.positions,
                )
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
    finally:
        await stop_consumer(consumer)
        await pool.close()
        if owner and not finished:
            await _discard(lock_conn, schema, key)
        await lock_conn.close()  # also releases the session's advisory lock


async def _swap(
    conn: asyncpg.Connection,
    projection: Any,
    schema: str,
    view_owners: Sequence[Any],
    stop: asyncio.Event,
    behind_ok: bool,
) -> list[str]:
    """Swap, backing off while readers hold the tables (never making them wait long)."""
    delay = 0.05
    for attempt in range(1, SWAP_ATTEMPTS + 1):
        try:
            async with conn.transaction():
                return await shadow.swap(conn, projection, schema, view_owners, behind_ok=behind_ok)
        except shadow.SwapError as exc:
            raise ReplayError(str(exc)) from None
        except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError) as exc:
            if attempt == SWAP_ATTEMPTS or stop.is_set():
                raise ReplayError(
                    f"could not take the locks to swap {projection.name} in after {attempt} "
                    f"attempts ({exc}); long-running queries hold its tables"
                ) from exc
            log.info("swap waiting for readers", projector=projection.name, attempt=attempt)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")


async def _discard(conn: asyncpg.Connection, schema: str, key: str) -> None:
    """Drop an unfinished rebuild (the live tables never changed)."""
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {shadow.ident(schema)} CASCADE")
        await offsets.forget(conn, key)
    except Exception as exc:  # the original error matters more; say what is left behind
        log.warning("could not drop the unfinished replay", schema=schema, error=str(exc))


async def _partitions(consumer: AIOKafkaConsumer, topics: Sequence[str]) -> list[TopicPartition]:
    try:
        return await partitions_of(consumer, topics)
    except UnknownTopic as exc:
        raise ReplayError(str(exc)) from None


async def _catch_up(
    consumer: AIOKafkaConsumer,
    applier: BatchApplier,
    settings: Settings,
    positions: dict[TopicPartition, int],
    stop: asyncio.Event,
    on_progress: Callable[[Progress], None] | None,
    started: float,
    floor: Mapping[TopicPartition, int] | None = None,
) -> int:
    """Apply batches until every partition reached the log end (less than a batch left)
    and at least `floor`; returns records done."""
    for tp, offset in positions.items():
        consumer.seek(tp, offset)
    first = dict(positions)
    ends: Mapping[TopicPartition, int] = await consumer.end_offsets(list(positions))
    backoff, last_report = 0.5, 0.0
    while True:
        behind = [tp for tp in positions if positions[tp] < ends[tp]]
        if not behind:
            fresh = await consumer.end_offsets(list(positions))
            # Swap once what is left is less than a batch: the live runner, re-seeking to
            # the rebuilt positions, applies the rest within its next batch.
            short = floor is not None and any(positions[tp] < floor.get(tp, 0) for tp in positions)
            if not short and (
                sum(fresh[tp] - positions[tp] for tp in positions) <= settings.projector_batch_size
            ):
                report_progress(on_progress, positions, first, ends, started, force=True)
                return sum(positions[tp] - first[tp] for tp in positions)
            ends = fresh
            continue
        if stop.is_set():
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
            await applier.commit(batch, {tp: positions[tp] for tp in batch})
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
            report_progress(on_progress, positions, first, ends, started)
