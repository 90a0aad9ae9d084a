"""Which records a batch sends to the hydrator, and how long it waits for one away.

A projection that reads thin events (or invoices whose lines the webhook cut short) gets
each such record through the hydrator (`projectors.stripe_api.hydrate`) before its
reducer sees it. Stripe can be away, or slow: the gate waits between tries, doubling
from `FIRST_HYDRATION_DELAY_S` to `MAX_HYDRATION_DELAY_S` (never sooner than Stripe's
`Retry-After`), and a batch waits at most its `hold` in all. Past it, the batch is cut
short before the record that would wait (`Cut`), or dropped whole when none was reduced
(`HeldTooLong`), so that the consumer goes on polling and keeps its partitions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import orjson
import structlog

from ingest.record import HEADER_EVENT_TYPE
from projectors.base import HydrationUnavailable, Record
from projectors.stopping import Abandoned
from projectors.stripe_api.lines import may_be_cut_short
from schemas.envelope import THIN

Hydrate = Callable[[Record], Awaitable[Record]]
# Waits between tries of an unavailable hydrator double from the first to the last.
FIRST_HYDRATION_DELAY_S = 0.5
MAX_HYDRATION_DELAY_S = 30.0
log = structlog.get_logger("lattice.projector")


class HeldTooLong(Abandoned):
    """The hydrator stayed unavailable for the applier's `hold` before the batch's first
    record was reduced: the batch is dropped (nothing was written) so that its records are
    fetched again. A group consumer that does not fetch for aiokafka's
    `max_poll_interval_ms` leaves its group, and its partitions go to another process, to
    wait there for the same Stripe."""


class Cut(Abandoned):
    """The hold ran out (the hydrator unavailable, or answers that each came in time
    adding up): the batch is prepared up to the record before; its message says why."""


def _event_type(record: Record) -> str | None:
    """The event's type: the receiver's header, else the body's own `type`."""
    kind = record.header(HEADER_EVENT_TYPE)
    if kind is None:
        found = orjson.loads(record.value).get("type")  # a thin event: JSON, checked
        kind = found if isinstance(found, str) else None
    return kind


def is_thin(record: Record) -> bool:
    """A thin event: `"object": "v2.core.event"` and no `data` (needs its full body)."""
    if THIN.encode() not in record.value:
        return False
    try:
        parsed = orjson.loads(record.value)
    except orjson.JSONDecodeError:
        return False
    return isinstance(parsed, dict) and parsed.get("object") == THIN and "data" not in parsed


class HydrationGate:
    """The hydrator of one projection's batches, behind its waits and its hold."""

    def __init__(
        self,
        hydrate: Hydrate,
        *,
        key: str,
        stop: asyncio.Event,
        hold: float | None,
        thin_types: frozenset[str] | None,
        complete_lines: bool,
    ) -> None:
        self.hydrate = hydrate
        self.key = key  # the projector, for the log
        self.stop = stop
        # The thin-event types the projection reads (None: all): the others reach `reduce`
        # as they are, so Stripe being down, or an event past its 30 days, cannot hold up
        # or dead-letter a record the projection would ignore anyway.
        self.thin_types = thin_types
        # Invoices and credit notes whose lines the webhook cut short go to the hydrator too.
        self.complete_lines = complete_lines
        # How long one batch may wait for the hydrator (None: as long as it takes), and
        # when the current one must give up.
        self.hold = hold
        self._hold_until = float("inf")
        # While the hydrator is unavailable: the next wait, and when the next try is due.
        self._delay = FIRST_HYDRATION_DELAY_S
        self._resume_at = 0.0

    def begin_batch(self) -> None:
        """Start the hold of a new batch."""
        if self.hold is not None:
            self._hold_until = asyncio.get_running_loop().time() + self.hold

    async def source(self, record: Record, *, retry: bool = False) -> Record:
        """What the reducer reads for `record`: the hydrator's answer where the projection
        needs one, else the record itself. Cut when the batch's hold ran out (never for a
        `retry` of a record already tried once), Abandoned when shutdown is asked."""
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
            raise Cut(f"hydrating this batch took over {self.hold:g} s")
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
                raise Cut(f"hydration unavailable for {self.hold:g} s")
            await self._wait_until(self._resume_at)

    async def _wait_until(self, when: float) -> None:
        """Sleep until loop time `when`; Abandoned if shutdown is asked first."""
        timeout = max(when - asyncio.get_running_loop().time(), 0.0)
        try:
            await asyncio.wait_for(self.stop.wait(), timeout=timeout)
        except TimeoutError:
            return
        raise Abandoned("shutdown while waiting for the hydrator")
