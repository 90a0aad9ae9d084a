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
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError

from deploy import kafka_options
from deploy.settings import Settings
from projectors import offsets, shadow
from projectors.base import LIVE_SCHEMA
from projectors.batch import Abandoned, BatchApplier, Hydrate, unless_stopped
from projectors.deadletter import DeadLetterSink, UnsentDeadLetters
from projectors.intake import stop_consumer
from projectors.migrate import READ_COMMITTED, MigrationError
from projectors.progress import Progress
from projectors.replay_catch_up import CatchUp
from projectors.replay_lock import LockTaken, ReplayLock
from projectors.replay_start import ReplayError, StartAt, check_offset, prepare
from projectors.topic_partitions import UnknownTopic, partitions_of

T = TypeVar("T")
INTERRUPTED = "replay interrupted; the live tables are unchanged"

log = structlog.get_logger("lattice.replay")
SWAP_ATTEMPTS = 200
# Swaps backed out because the live runner was past the rebuild; the last one swaps anyway
# (the live runner then applies those records again, its rows back within a batch).
SWAP_ROUNDS = 5
# A swap cut off by these is undone by the server (or committed: see `swap_committed`)
# and tried again on a new session. Not a cancelled statement (a statement_timeout, a
# pg_cancel_backend), an OperatorInterventionError too: that one waits as for readers.
DATABASE_AWAY = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
)


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
                swapped = await _swap(lock, projection, schema, view_owners, stop, last)
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
    built: dict[str, int] = {}  # the shadow's tables and their OIDs, which a swap keeps
    cut_off = False
    for attempt in range(1, SWAP_ATTEMPTS + 1):
        try:
            conn = await lock.session()
            if cut_off and await swap_committed(conn, built.values()):
                return list(built)  # committed, its answer lost with the connection
            built = built or await shadow.table_oids(conn, schema)
            async with conn.transaction(isolation=READ_COMMITTED):
                return await shadow.swap(conn, projection, schema, view_owners, behind_ok=behind_ok)
        except LockTaken:
            # Another replay took the lock while ours was lost. If that loss was only the
            # answer to our commit, the live tables are the ones this replay built.
            if cut_off and await _swap_committed_at(lock.url, built.values()):
                return list(built)
            raise
        except (ReplayError, shadow.ShadowBehind):
            raise
        except shadow.SwapError as exc:
            raise ReplayError(str(exc)) from None
        except shadow.READERS_HOLD as exc:
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
                raise ReplayError(
                    f"the database went away at the swap of {projection.name} ({exc}); "
                    "the live tables are unchanged, or swapped if it committed: "
                    "`lattice status` shows which"
                ) from exc
            await lock.lost()
            cut_off = True
            log.warning("database unavailable at the swap; retrying", error=str(exc))
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")


async def swap_committed(conn: asyncpg.Connection, built: Collection[int]) -> bool:
    """Whether a swap cut off at its commit did commit: the tables it was swapping in
    (`built`, their OIDs) are the live ones now. Not when another replay, which took the
    lock while it was lost, dropped them (a bare "the shadow schema is gone" would say
    yes)."""
    if not built:
        return False
    live = await conn.fetchval(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = ANY($1::oid[]) AND n.nspname = $2",
        list(built),
        LIVE_SCHEMA,
    )
    return bool(live == len(built))


async def _swap_committed_at(url: str, built: Collection[int]) -> bool:
    """`swap_committed`, asked on a session of its own (the lock is another replay's);
    ReplayError when the database cannot be asked (away, refusing connections)."""
    conn: asyncpg.Connection | None = None
    try:
        conn = await asyncpg.connect(url)
        return await swap_committed(conn, built)
    except Exception as exc:
        raise ReplayError(
            f"the database went away at the swap, and another replay took the lock "
            f"meanwhile; asking whether the swap committed failed too "
            f"({type(exc).__name__}: {exc}); the live tables are unchanged, or swapped if it "
            "committed: `lattice status` shows which"
        ) from exc
    finally:
        if conn is not None:
            conn.terminate()  # no answer to wait for, and nothing that can fail


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
