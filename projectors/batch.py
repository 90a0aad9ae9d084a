"""One batch, one transaction: reduce the records, apply the changes, move the positions.

Shared by the live runner and by replay (which writes into a shadow schema under its own
positions). Poison is isolated here: a reducer that keeps failing, or an apply that fails
for one record alone (found by applying the batch again, each record under a savepoint,
once the whole batch failed and rolled back), is retried a bounded number of times and
then dead-lettered; the position moves past it.
A lost connection is never poison: it propagates, and the caller reconnects and re-seeks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import orjson
import structlog
from aiokafka import TopicPartition

from ingest.record import HEADER_EVENT_ID, HEADER_EVENT_TYPE
from projectors import deadletter, offsets
from projectors.base import Connection, HydrationUnavailable, PoisonRecord, Record
from projectors.deadletter import DeadLetter, DeadLetterSink
from projectors.failures import is_transient
from projectors.migrate import READ_COMMITTED
from projectors.stripe_api.lines import may_be_cut_short
from schemas.envelope import EnvelopeError, parse_event

Hydrate = Callable[[Record], Awaitable[Record]]
T = TypeVar("T")
THIN_EVENT = "v2.core.event"
YIELD_EVERY = 50
# Waits between tries of an unavailable hydrator double from the first to the last.
FIRST_HYDRATION_DELAY_S = 0.5
MAX_HYDRATION_DELAY_S = 30.0
log = structlog.get_logger("lattice.projector")


class Abandoned(Exception):
    """Shutdown was asked while the batch waited (for a hydrator): nothing was written."""


async def unless_stopped(work: Coroutine[Any, Any, T], stop: asyncio.Event, what: str) -> T:
    """`work`'s result; Abandoned(`what`) (`work` cancelled, and its statement with it)
    when `stop` is set first."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not task.done():  # stopped, or this call itself cancelled: never outlive it
            task.cancel()
            # What cancelling its statement raised (a connection cut meanwhile) is moot.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    if task.cancelled() or (stop.is_set() and task.exception() is not None):
        raise Abandoned(what)
    return task.result()


class HeldTooLong(Abandoned):
    """The hydrator stayed unavailable for the applier's `hold` before the batch's first
    record was reduced: the batch is dropped (nothing was written) so that its records are
    fetched again. A group consumer that does not fetch for aiokafka's
    `max_poll_interval_ms` leaves its group, and its partitions go to another process, to
    wait there for the same Stripe."""


class _Cut(Abandoned):
    """The hold ran out (the hydrator unavailable, or answers that each came in time
    adding up): the batch is prepared up to the record before; its message says why."""


class _BatchApplyFailed(Exception):
    """A batch's apply failed for a record (not the database): isolate records and retry."""


def _event_type(record: Record) -> str | None:
    """The event's type: the receiver's header, else the body's own `type`."""
    kind = record.header(HEADER_EVENT_TYPE)
    if kind is None:
        found = orjson.loads(record.value).get("type")  # a thin event: JSON, checked
        kind = found if isinstance(found, str) else None
    return kind


def is_thin(record: Record) -> bool:
    """A thin event: `"object": "v2.core.event"` and no `data` (needs its full body)."""
    if THIN_EVENT.encode() not in record.value:
        return False
    try:
        parsed = orjson.loads(record.value)
    except orjson.JSONDecodeError:
        return False
    return isinstance(parsed, dict) and parsed.get("object") == THIN_EVENT and "data" not in parsed


@dataclass(frozen=True, slots=True)
class Prepared:
    """A reduced batch, ready to write."""

    batch: Mapping[TopicPartition, Sequence[Record]]
    reduced: list[tuple[Record, Sequence[Any]]]
    dead: list[DeadLetter]
    # The hold ran out before the last record fetched: only those before it are here, and
    # the rest is to be fetched again once this is written.
    cut: bool = False

    @property
    def records(self) -> int:
        """How many records the batch holds."""
        return sum(len(recs) for recs in self.batch.values())


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one committed batch did."""

    records: int
    changes: int
    dead: int  # dead letters sent


class BatchApplier:
    """Turns batches of one projection into committed transactions."""

    def __init__(
        self,
        projection: Any,
        pool: asyncpg.Pool,
        dead_letters: DeadLetterSink,
        *,
        schema: str,
        projector_key: str,
        retries: int = 3,
        hydrate: Hydrate | None = None,
        stop: asyncio.Event | None = None,
        event_log: str | None = None,
        hold: float | None = None,
    ) -> None:
        self.projection = projection
        # The topic of Stripe events (LATTICE_TOPIC). A record there without the receiver's
        # `stripe-event-id` header (a producer of someone else's, a record sent again by
        # hand) is first checked as the receiver checks a body: what it would have refused
        # is a dead letter for every projection, never rows in some tables and not others.
        self.event_log = event_log
        self.pool = pool
        self.dead_letters = dead_letters
        self.schema = schema
        self.key = projector_key
        self.retries = max(1, retries)
        self.hydrate = hydrate if getattr(projection, "hydrate_thin_events", False) else None
        # The thin-event types the projection reads (None: all): the others reach `reduce`
        # as they are, so Stripe being down, or an event past its 30 days, cannot hold up
        # or dead-letter a record the projection would ignore anyway.
        self.thin_types: frozenset[str] | None = getattr(projection, "thin_event_types", None)
        # Invoices and credit notes whose lines the webhook cut short go to the hydrator too.
        self.complete_lines = bool(getattr(projection, "complete_lines", False))
        self.stop = stop or asyncio.Event()
        # How long one `prepare` may wait for the hydrator (None: as long as it takes), and
        # when the current one must give up.
        self.hold = hold
        self._hold_until = float("inf")
        # While the hydrator is unavailable: the next wait, and when the next try is due.
        self._delay = FIRST_HYDRATION_DELAY_S
        self._resume_at = 0.0
        # Commits stay synchronous: with `synchronous_commit = off` a server crash loses the
        # last commits (rows and positions together, so nothing is applied wrongly), and a
        # projector idle at the log end goes on believing its positions are stored until
        # its next idle check (`runner.IDLE_CHECK_S`); the fault suite caught one stalled
        # so before that check existed. An acknowledged commit should stay committed.
        self._settings_sql = f'SET LOCAL search_path TO "{schema}", public'

    async def commit(
        self,
        batch: Mapping[TopicPartition, Sequence[Record]],
        expected: Mapping[TopicPartition, int | None],
    ) -> Outcome:
        """Reduce and write `batch` (see `prepare` and `write`), whole."""
        prepared = await self.prepare(batch)
        if prepared.cut:
            # Its positions would move past records never applied.
            raise RuntimeError("commit() writes whole batches: an applier with a hold cuts them")
        return await self.write(prepared, expected)

    async def prepare(self, batch: Mapping[TopicPartition, Sequence[Record]]) -> Prepared:
        """Reduce every record (hydrating thin events first when the projection asks);
        records that keep failing become dead letters. No I/O but the hydrator's, so the
        runner can prepare the next batch while the database writes this one. Past
        `hold` (the hydrator unavailable, or answers that each came in time adding up)
        the batch is cut short after the records reduced (`Prepared.cut`); HeldTooLong
        when none was."""
        if self.hold is not None:
            self._hold_until = asyncio.get_running_loop().time() + self.hold
        records = [r for recs in batch.values() for r in recs]
        reduced, dead, cut = await self._reduce(records)
        taken = len(reduced) + len(dead)  # each record taken adds to one of them
        if cut is None:
            return Prepared(batch, reduced, dead)
        if not taken:
            raise HeldTooLong(str(cut))
        # The records are taken partition after partition: the first `taken` are whole
        # partitions, then the head of one.
        head: dict[TopicPartition, Sequence[Record]] = {}
        for tp, recs in batch.items():
            if taken <= 0:
                break
            head[tp] = recs[:taken]
            taken -= len(recs)
        return Prepared(head, reduced, dead, cut=True)

    async def write(
        self, prepared: Prepared, expected: Mapping[TopicPartition, int | None]
    ) -> Outcome:
        """Apply the changes and move the batch's partitions from `expected`, in one
        transaction. Raises PositionConflict (rolled back; re-seek) or a transient
        database error (rolled back; reconnect and re-seek)."""
        moves = {
            tp: offsets.Advance(expected.get(tp), recs[-1].offset + 1, recs[-1].timestamp_ms)
            for tp, recs in prepared.batch.items()
            if recs
        }
        try:
            sent = await self._transaction(prepared, moves, isolate=False)
        except _BatchApplyFailed:
            # Rolled back whole. Again, with every record under its own savepoint, to tell
            # the poison from the rest (a savepoint around the whole batch would cost two
            # round trips on every batch, the fine ones included).
            sent = await self._transaction(prepared, moves, isolate=True)
        changes = sum(len(c) for _, c in prepared.reduced)
        return Outcome(prepared.records, changes, sent)

    async def _transaction(
        self, prepared: Prepared, moves: Mapping[TopicPartition, offsets.Advance], *, isolate: bool
    ) -> int:
        """The batch's transaction; how many dead letters it sent (not those sent before,
        when records are applied again)."""
        dead = list(prepared.dead)
        sent = 0
        async with self.pool.acquire() as conn, conn.transaction(isolation=READ_COMMITTED):
            await conn.execute(self._settings_sql)
            # Positions first: a zombie fails before doing the work, and the row locks are
            # taken before the table locks, the same order a replay swap uses.
            await offsets.compare_and_set(conn, self.key, moves)
            if isolate:
                dead += await self._isolate(conn, prepared.reduced)
            else:
                await self._apply(conn, prepared.reduced)
            if dead:
                sent = await self.dead_letters.send(dead)
                await deadletter.record(conn, dead)
        return sent

    async def _reduce(
        self, records: Sequence[Record]
    ) -> tuple[list[tuple[Record, Sequence[Any]]], list[DeadLetter], _Cut | None]:
        """The changes and dead letters of `records` (of those before the cut, when the
        hold cut the batch short), and the cut."""
        reduced: list[tuple[Record, Sequence[Any]]] = []
        dead: list[DeadLetter] = []
        try:
            await self._reduce_into(records, reduced, dead)
        except _Cut as cut:
            return reduced, dead, cut
        return reduced, dead, None

    async def _reduce_into(
        self,
        records: Sequence[Record],
        reduced: list[tuple[Record, Sequence[Any]]],
        dead: list[DeadLetter],
    ) -> None:
        reduce = self.projection.reduce
        for n, record in enumerate(records):
            if n % YIELD_EVERY == YIELD_EVERY - 1:
                # Let the batch being written meanwhile get its replies: reducing is CPU work
                # that would otherwise hold its round trips until the whole batch is reduced.
                await asyncio.sleep(0)
            try:
                # The hot path: one call, no retry bookkeeping, when the record is fine.
                _check_envelope(record, self.event_log)
                source = record if self.hydrate is None else await self._hydrated(record)
                reduced.append((record, reduce(source)))
            except Abandoned:
                raise
            except Exception as first:
                if is_transient(first):
                    raise  # the database (via the hydrator's cache), not the record
                outcome = await self._retry_reduce(record, first)
                if isinstance(outcome, DeadLetter):
                    dead.append(outcome)
                else:
                    reduced.append((record, outcome))

    async def _retry_reduce(self, record: Record, first: Exception) -> Sequence[Any] | DeadLetter:
        error: Exception = first
        attempts = 1
        # A PoisonRecord is a verdict, not a failure: trying again would give it again (and
        # a hydrator's would ask Stripe again, on the account's rate limit).
        while attempts < self.retries and not isinstance(error, PoisonRecord):
            attempts += 1
            try:
                _check_envelope(record, self.event_log)
                source = (
                    record if self.hydrate is None else await self._hydrated(record, retry=True)
                )
                result: Sequence[Any] = self.projection.reduce(source)
                return result
            except Abandoned:
                raise
            except Exception as exc:
                if is_transient(exc):
                    raise
                error = exc
        return self._letter(record, "reduce", error, attempts=attempts)

    async def _hydrated(self, record: Record, *, retry: bool = False) -> Record:
        assert self.hydrate is not None
        if not is_thin(record):
            # An invoice or credit note whose lines the webhook cut short, for a projection
            # that asks for them whole (the hydrator decides, and may leave it as it is).
            if not (self.complete_lines and may_be_cut_short(record)):
                return record
        elif self.thin_types is not None and _event_type(record) not in self.thin_types:
            return record
        loop = asyncio.get_running_loop()
        if loop.time() >= self._hold_until and not retry:
            # Slow answers add up too (a month's end of invoices whose lines run to many
            # pages): the batch ends before this record, and what it holds is written. Each
            # batch so gets at least one record on, cached or not (a 404's verdict is not):
            # its first is always tried, and a record tried once has its retries too.
            raise _Cut(f"hydrating this batch took over {self.hold:g} s")
        while True:
            if loop.time() >= self._resume_at:
                try:
                    hydrated = await self.hydrate(record)
                except HydrationUnavailable as exc:
                    wait = max(self._delay, exc.retry_after or 0.0)  # never sooner than asked
                    self._delay = min(self._delay * 2, MAX_HYDRATION_DELAY_S)
                    self._resume_at = loop.time() + wait
                    log.warning(
                        "hydration unavailable; waiting",
                        projector=self.key,
                        partition=record.partition,
                        offset=record.offset,
                        error=str(exc),
                        retry_in_s=wait,
                    )
                else:
                    self._delay = FIRST_HYDRATION_DELAY_S
                    return hydrated
            # The next try is due at `_resume_at`, also after the cut: the batch fetched
            # again waits out the rest of it.
            if self._resume_at > self._hold_until:
                await self._wait_until(self._hold_until)
                raise _Cut(f"hydration unavailable for {self.hold:g} s")
            await self._wait_until(self._resume_at)

    async def _wait_until(self, when: float) -> None:
        """Sleep until loop time `when`; Abandoned if shutdown is asked first."""
        timeout = max(when - asyncio.get_running_loop().time(), 0.0)
        try:
            await asyncio.wait_for(self.stop.wait(), timeout=timeout)
        except TimeoutError:
            return
        raise Abandoned("shutdown while waiting for the hydrator")

    async def _apply(
        self, conn: Connection, reduced: Sequence[tuple[Record, Sequence[Any]]]
    ) -> None:
        """The whole batch in one go; _BatchApplyFailed (the transaction rolls back) when
        it fails for something other than the database itself."""
        changes = [change for _, cs in reduced for change in cs]
        if not changes:
            return
        try:
            await self.projection.apply(conn, changes)
        except Exception as exc:
            if is_transient(exc):
                raise
            log.warning(
                "batch apply failed; isolating records with savepoints",
                projector=self.key,
                records=len(reduced),
                error=str(exc),
            )
            raise _BatchApplyFailed from exc

    async def _isolate(
        self, conn: Connection, reduced: Sequence[tuple[Record, Sequence[Any]]]
    ) -> list[DeadLetter]:
        """Each record's changes under a savepoint: the ones that keep failing become
        dead letters, the others are applied."""
        return [
            letter
            for record, cs in reduced
            if cs and (letter := await self._apply_one(conn, record, cs)) is not None
        ]

    async def _apply_one(
        self, conn: Connection, record: Record, changes: Sequence[Any]
    ) -> DeadLetter | None:
        error: Exception | None = None
        for _ in range(self.retries):
            try:
                async with conn.transaction():
                    await self.projection.apply(conn, changes)
                return None
            except Exception as exc:
                if is_transient(exc):
                    raise
                error = exc
        assert error is not None
        return self._letter(record, "apply", error)

    def _letter(
        self, record: Record, stage: str, error: Exception, *, attempts: int | None = None
    ) -> DeadLetter:
        tries = self.retries if attempts is None else attempts
        said = "1 attempt" if tries == 1 else f"{tries} attempts"
        message = f"{stage} failed after {said}: {type(error).__name__}: {error}"
        log.error(
            "dead letter",
            projector=self.key,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            error=message,
        )
        return DeadLetter(self.projection.name, record, message)


def _check_envelope(record: Record, event_log: str | None) -> None:
    """For a record of the event log without the receiver's `stripe-event-id` header:
    PoisonRecord unless its value is a Stripe event as the receiver judges one."""
    if record.topic != event_log or HEADER_EVENT_ID in record.headers:
        return
    try:
        parse_event(record.value)
    except EnvelopeError as exc:
        raise PoisonRecord(f"not a Stripe event: {exc}") from None
