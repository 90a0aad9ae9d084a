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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog
from aiokafka import TopicPartition

from ingest.record import HEADER_EVENT_ID
from projectors import deadletter, offsets
from projectors.base import Connection, PoisonRecord, Record
from projectors.deadletter import DeadLetter, DeadLetterSink
from projectors.failures import is_transient
from projectors.hydration_gate import Cut, HeldTooLong, Hydrate, HydrationGate
from projectors.migrate import READ_COMMITTED
from projectors.stopping import Abandoned
from schemas.envelope import EnvelopeError, parse_event

YIELD_EVERY = 50
log = structlog.get_logger("lattice.projector")


class _BatchApplyFailed(Exception):
    """A batch's apply failed for a record (not the database): isolate records and retry."""


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
        # The hydrator, behind its waits and its hold, for a projection that asks for one.
        self.gate: HydrationGate | None = None
        if hydrate is not None and getattr(projection, "hydrate_thin_events", False):
            self.gate = HydrationGate(
                hydrate,
                key=projector_key,
                stop=stop or asyncio.Event(),
                hold=hold,
                thin_types=getattr(projection, "thin_event_types", None),
                complete_lines=bool(getattr(projection, "complete_lines", False)),
            )
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
        if self.gate is not None:
            self.gate.begin_batch()
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
    ) -> tuple[list[tuple[Record, Sequence[Any]]], list[DeadLetter], Cut | None]:
        """The changes and dead letters of `records` (of those before the cut, when the
        hold cut the batch short), and the cut."""
        reduced: list[tuple[Record, Sequence[Any]]] = []
        dead: list[DeadLetter] = []
        try:
            await self._reduce_into(records, reduced, dead)
        except Cut as cut:
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
                source = record if self.gate is None else await self.gate.source(record)
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
                source = record if self.gate is None else await self.gate.source(record, retry=True)
                result: Sequence[Any] = self.projection.reduce(source)
                return result
            except Abandoned:
                raise
            except Exception as exc:
                if is_transient(exc):
                    raise
                error = exc
        return self._letter(record, "reduce", error, attempts=attempts)

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
