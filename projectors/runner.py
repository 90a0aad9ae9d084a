"""The consume → apply → commit loop of one projection.

One aiokafka consumer per projection, group `lattice.<name>`, auto-commit off. Positions
live in `lattice.offsets`, written with the rows in one transaction (`batch.py`); on every
assignment the consumer seeks to them. Kafka's committed offsets are never used.

Two batches overlap: while PostgreSQL writes batch N (its own process, its own core), this
one fetches and reduces batch N+1. Batch N+1 is written only after N committed, from the
positions N left, so the positions still move strictly in order; it takes along what was
fetched meanwhile, which would otherwise wait for its write too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord

from deploy.settings import Settings
from projectors import intake, offsets
from projectors.base import LIVE_SCHEMA, Record
from projectors.batch import BatchApplier, Outcome, Prepared
from projectors.deadletter import DeadLetterSink
from projectors.failures import is_transient
from projectors.hydration_gate import HeldTooLong, Hydrate
from projectors.intake import (
    Fetched,
    getmany,
    group_consumer,
    group_of,
    joined,
    start_consumer,
    stop_consumer,
    take,
)
from projectors.metrics import RuntimeMetrics
from projectors.offsets import PositionConflict
from projectors.rebalance import SeekToStored
from projectors.stopping import Abandoned
from projectors.topic_partitions import check_stored_positions

log = structlog.get_logger("lattice.projector")
MAX_BACKOFF_S = 10.0
# How often a runner idle at the log end compares its positions with the stored ones.
IDLE_CHECK_S = 5.0


class ProjectionRunner:
    """Runs one projection until `stop` is set."""

    def __init__(
        self,
        projection: Any,
        settings: Settings,
        pool: asyncpg.Pool,
        dead_letters: DeadLetterSink,
        *,
        hydrate: Hydrate | None = None,
        metrics: RuntimeMetrics | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.projection = projection
        self.name: str = projection.name
        self.settings = settings
        self.pool = pool
        self.stop = stop or asyncio.Event()
        self.metrics = metrics or RuntimeMetrics()
        self.applier = BatchApplier(
            projection,
            pool,
            dead_letters,
            schema=LIVE_SCHEMA,
            projector_key=self.name,
            retries=settings.poison_retries,
            hydrate=hydrate,
            stop=self.stop,
            event_log=settings.topic,
            # Stripe away for minutes must not cost the consumer its partitions.
            hold=intake.MAX_POLL_INTERVAL_MS / 1000 / 2,
        )
        # Stored position of each assigned partition (None: nothing stored yet), and the
        # next offset to take from a fetch (ahead of the stored one while a batch writes).
        self.positions: dict[TopicPartition, int | None] = {}
        self.fetched: dict[TopicPartition, int | None] = {}
        # Bumped by every seek and rebalance: a batch fetched before one is dropped.
        self.epoch = 0
        self.consumer: AIOKafkaConsumer | None = None
        self._inflight: tuple[asyncio.Task[Outcome], Prepared, float] | None = None
        # A getmany still waiting when the batch before committed, and the epoch it began in.
        self._fetch: tuple[asyncio.Future[Fetched], int] | None = None
        self._drain_lock = asyncio.Lock()
        self.started = asyncio.Event()  # its consumer has started (for /readyz)
        self._needs_seek = False
        self._needs_pause = False
        # An error met where it cannot be raised (the rebalance listener): raised by the
        # main loop before it writes anything else.
        self._failed: Exception | None = None
        self._backoff = 0.5
        self._next_idle_check = 0.0
        # The deleted offsets this process has warned of, said once each (a partition
        # whose records were all deleted would be said again at every rebalance).
        self._deleted_said: set[tuple[TopicPartition, int, int]] = set()

    async def _start_unless_stopped(self, consumer: AIOKafkaConsumer) -> bool:
        """Start `consumer`; False if `stop` came first. Its start waits for the group's
        coordinator and assignment, for ever where the cluster has none to give (its
        `__consumer_offsets` cannot be created): a SIGTERM must still stop the process."""
        starting = asyncio.ensure_future(start_consumer(consumer, self.settings))
        stopping = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # this task cancelled: the start goes with it
            starting.cancel()
            raise
        finally:
            stopping.cancel()
        if starting.done():
            starting.result()  # a refused session timeout: one line (ConfigError)
            return True
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        await stop_consumer(consumer)
        log.info("projector stopped before it started", projector=self.name)
        return False

    async def run(self) -> None:
        """Consume, apply and commit until `stop` is set; then leave the group cleanly."""
        consumer = group_consumer(self.settings, self.name)
        self.consumer = consumer
        consumer.subscribe(list(self.projection.topics(self.settings)), listener=SeekToStored(self))
        if not await self._start_unless_stopped(consumer):
            return
        self.started.set()
        log.info(
            "projector started",
            projector=self.name,
            group=group_of(self.name, self.settings.group_prefix),
        )
        try:
            while not self.stop.is_set():
                if self._failed is not None:
                    raise self._failed
                if self._needs_seek:
                    await self.drain()
                    if self._needs_pause:
                        self._needs_pause = False
                        await self._pause()
                    if not await self._reseek():
                        await self._pause()
                    continue
                fetch, epoch = self._fetch or (
                    self._getmany(self.settings.projector_batch_size),
                    self.epoch,
                )
                self._fetch = None
                fetched = await fetch
                if epoch != self.epoch:
                    # Fetched across a seek or a rebalance: the records may not follow the
                    # positions held now. Seek again and fetch from them.
                    self._needs_seek = True
                    continue
                batch = self._take(fetched)
                if not batch:
                    if self._inflight is not None and self._inflight[0].done():
                        await self.drain()
                    elif self._inflight is None and time.monotonic() >= self._next_idle_check:
                        await self._check_stored(epoch)
                    continue
                started = time.monotonic()
                try:
                    prepared = await self._fill(await self.applier.prepare(batch), epoch)
                except HeldTooLong as exc:
                    # Fetched again from the stored positions, which keeps the consumer in
                    # its group; the hydrator is tried when its wait is over.
                    log.warning("batch dropped to fetch again", projector=self.name, why=str(exc))
                    self._needs_seek = True
                    continue
                except Abandoned:
                    break
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    self._database_lost(exc)
                    continue
                if epoch != self.epoch:
                    # A rebalance or seek happened since the fetch: the batch may be stale.
                    # Drop it and seek again, so nothing is skipped or applied twice.
                    self._needs_seek = True
                if self._failed is not None:
                    raise self._failed
                if not self._needs_seek:
                    expected = {tp: self.positions.get(tp) for tp in prepared.batch}
                    task = asyncio.create_task(self.applier.write(prepared, expected))
                    self._inflight = (task, prepared, started)
                    if prepared.cut:
                        # What follows the cut was fetched and not taken: once this is
                        # written, it is fetched again from the positions it stored.
                        log.warning(
                            "batch cut short at the hold; the rest is fetched again",
                            projector=self.name,
                            records=prepared.records,
                        )
                        self._needs_seek = True
                    # Let the write send its first statement now, not after the next
                    # chunk of records is unpacked.
                    await asyncio.sleep(0)
        finally:
            if self._fetch is not None:
                self._fetch[0].cancel()
            try:
                await self.drain()  # SIGTERM: the batch in flight commits or rolls back first
            finally:
                await stop_consumer(consumer)  # leave the group now, whatever the drain raised
                log.info("projector stopped", projector=self.name)

    async def _getmany(self, most: int) -> Fetched:
        assert self.consumer is not None
        return await getmany(self.consumer, most, self.settings.projector_batch_wait_ms)

    async def _fill(self, prepared: Prepared, epoch: int) -> Prepared:
        """Until the batch before commits, keep taking and reducing what arrives: left for
        the batch after, it would wait for this one's whole write too (~2.5 writes from
        append to visible instead of ~1.5). Never past the batch size; a fetch still waiting
        when the write ends is kept for the next batch (cancelling one would upset aiokafka).
        An empty fetch ends it, so a hung write still stops the polling."""
        while (inflight := self._inflight) is not None and epoch == self.epoch:
            room = self.settings.projector_batch_size - prepared.records
            if room <= 0 or self._needs_seek or prepared.cut:
                break
            fetch = asyncio.ensure_future(self._getmany(room))
            self._fetch = (fetch, epoch)
            await asyncio.wait((fetch, inflight[0]), return_when=asyncio.FIRST_COMPLETED)
            if not fetch.done():
                break
            self._fetch = None
            if epoch != self.epoch:
                break  # a rebalance or seek meanwhile: the caller drops the batch, re-seeks
            more = self._take(fetch.result())
            if not more:
                break
            try:
                prepared = joined(prepared, await self.applier.prepare(more))
            except HeldTooLong:
                # Nothing of `more` was taken: what was is written, `more` fetched again.
                prepared = dataclasses.replace(prepared, cut=True)
                break
        await self.drain()
        return prepared

    async def _check_stored(self, epoch: int) -> None:
        """Idle at the log end, no compare-and-set would tell the runner that its stored
        positions moved (PostgreSQL restored from an older backup, positions edited by
        hand): compare them every `IDLE_CHECK_S` and re-seek to them when they differ, so
        the tables heal without waiting for the next record."""
        self._next_idle_check = time.monotonic() + IDLE_CHECK_S
        held = dict(self.positions)
        if not held:
            return
        try:
            async with self.pool.acquire() as conn:
                stored = await offsets.load(conn, self.name, list(held))
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._database_lost(exc)
            return
        moved = {tp: (held[tp], stored.get(tp)) for tp in held if stored.get(tp) != held[tp]}
        if moved and epoch == self.epoch and self._inflight is None:
            log.warning(
                "stored positions moved while idle; re-seeking",
                projector=self.name,
                moved={f"{tp.topic}:{tp.partition}": m for tp, m in moved.items()},
            )
            self._needs_seek = True

    def _database_lost(self, exc: Exception) -> None:
        """The database failed, not a record: pause, reconnect and re-seek to the stored
        positions (whatever was fetched since is fetched again)."""
        self.metrics.database_errors.labels(self.name).inc()
        log.warning(
            "dead-letter topic unavailable; will retry and re-seek"
            if isinstance(exc, KafkaError)
            else "database unavailable; will reconnect and re-seek",
            projector=self.name,
            error=f"{type(exc).__name__}: {exc}",
        )
        self._needs_seek = self._needs_pause = True

    def _take(
        self, fetched: Mapping[TopicPartition, Sequence[ConsumerRecord[bytes, bytes]]]
    ) -> dict[TopicPartition, list[Record]]:
        return take(fetched, self.fetched)

    async def drain(self) -> None:
        """Wait for the batch in flight; on success its positions become the stored ones,
        on a conflict or a lost database the runner re-seeks before it goes on."""
        async with self._drain_lock:
            if self._inflight is None:
                return
            task, prepared, started = self._inflight
            try:
                outcome = await asyncio.shield(task)
            except PositionConflict as exc:
                self.metrics.conflicts.labels(self.name).inc()
                log.warning("positions moved; re-seeking", projector=self.name, error=str(exc))
                self._needs_seek = True
                return
            except Exception as exc:
                if not is_transient(exc):
                    # Its positions are unknown now: nothing may be written from them.
                    self._needs_seek = True
                    raise
                self._database_lost(exc)
                return
            finally:
                self._inflight = None
            for tp, records in prepared.batch.items():
                if tp in self.positions:
                    self.positions[tp] = records[-1].offset + 1
            self._backoff = 0.5
            assert self.consumer is not None
            seconds = time.monotonic() - started
            lag = {
                tp: (self.consumer.highwater(tp), self.positions.get(tp)) for tp in prepared.batch
            }
            self.metrics.committed(self.name, outcome.records, outcome.dead, seconds, lag)
            log.info(
                "batch",
                projector=self.name,
                records=outcome.records,
                dead=outcome.dead,
                partitions=sorted(tp.partition for tp in prepared.batch),
                ms=round(seconds * 1000, 1),
            )

    def fail(self, exc: Exception) -> None:
        """Hand the main loop an error met in the rebalance listener: it raises it before
        any other write, and the batch it holds is dropped (the epoch moves)."""
        log.error("rebalance failed", projector=self.name, error=f"{type(exc).__name__}: {exc}")
        if self._failed is None:
            self._failed = exc
        self._needs_seek = True
        self.epoch += 1

    async def seek_to_stored(self, partitions: Sequence[TopicPartition]) -> None:
        """Seek each partition to its stored position (the beginning when none); on a
        database failure pause them and retry from the main loop.

        aiokafka hands out records of a new assignment at once, from its own position,
        while the stored positions are read here. Taken from the stored positions on, such
        records would skip the ones between or apply some twice. So nothing is taken from
        the partitions until every seek is done (they are not in `fetched`), and the epoch
        moves again after the seeks: a fetch begun before them is dropped, not taken.
        A rebalance or another seek while this one waits supersedes it: it stops there."""
        assert self.consumer is not None
        self.epoch += 1
        epoch = self.epoch
        self.positions.clear()
        self.fetched.clear()
        if not partitions:
            # Nothing assigned: nothing to seek, so nothing is owed a seek or a pause.
            self._needs_seek = self._needs_pause = False
            return
        try:
            async with self.pool.acquire() as conn:
                stored = await offsets.load(conn, self.name, partitions)
            await check_stored_positions(self.consumer, self.name, stored, self._deleted_said)
            for tp, position in stored.items():
                if epoch != self.epoch:
                    return
                if position is None:
                    await self.consumer.seek_to_beginning(tp)
                else:
                    self.consumer.seek(tp, position)
        except IllegalStateError:
            # Unassigned meanwhile, before aiokafka told the listener: seek again after it.
            self._needs_seek = True
            return
        except Exception as exc:
            if not is_transient(exc):
                raise
            if epoch == self.epoch and self._still_assigned(partitions):
                log.warning(
                    "cannot read stored positions; pausing",
                    projector=self.name,
                    error=f"{type(exc).__name__}: {exc}",
                )
                self.consumer.pause(*partitions)
                self._needs_seek = True
            return
        if epoch != self.epoch:
            return
        if not self._still_assigned(partitions):
            self._needs_seek = True
            return
        self.positions.update(stored)
        self.fetched.update(stored)
        self.epoch += 1
        self.consumer.resume(*partitions)
        self._needs_seek = self._needs_pause = False
        log.info(
            "seeked to stored positions",
            projector=self.name,
            positions={f"{tp.topic}:{tp.partition}": p for tp, p in stored.items()},
        )

    def _still_assigned(self, partitions: Sequence[TopicPartition]) -> bool:
        """aiokafka changes the assignment, then awaits, then tells the listener: a seek can
        end in between, with partitions that are no longer ours (resuming them raises)."""
        assert self.consumer is not None
        assigned: set[TopicPartition] = self.consumer.assignment()
        return set(partitions) <= assigned

    async def _reseek(self) -> bool:
        assert self.consumer is not None
        await self.seek_to_stored(list(self.consumer.assignment()))
        return not self._needs_seek

    async def _pause(self) -> None:
        """Wait before touching the database again (or until shutdown). The consumer is
        polled first, and what it returns dropped (a re-seek follows every pause): one
        that does not poll for `max_poll_interval_ms` leaves its group, and with the
        database away for minutes every process would, and all rejoin when it is back.
        A rebalance's seek can run meanwhile: a record polled from a partition it has
        already seeked moves that partition past it, so the seek is superseded (the
        epoch moves) and the next one starts over."""
        assert self.consumer is not None
        assert self._needs_seek
        if self._fetch is None or self._fetch[0].done():  # else a poll is under way
            with contextlib.suppress(KafkaError):
                if await self.consumer.getmany(timeout_ms=0, max_records=1):
                    self._needs_seek = True
                    self.epoch += 1
        try:
            await asyncio.wait_for(self.stop.wait(), timeout=self._backoff)
        except TimeoutError:
            self._backoff = min(self._backoff * 2, MAX_BACKOFF_S)
