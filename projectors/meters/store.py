"""Writing a batch of meters changes: one array statement per table, then the recompute.

Within a batch the changes are first merged per key with the same rules the SQL uses
between batches (see queries.py), because one INSERT ... ON CONFLICT may not touch a row
twice. Runs in the caller's transaction and never opens one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, TypeVar

import asyncpg

from projectors.meters import fact_queries, queries
from projectors.meters.changes import (
    Change,
    CreditNoteLineSeen,
    CreditNoteSeen,
    ErrorReport,
    FactRejected,
    InvoiceLineSeen,
    InvoiceSeen,
    MeterSeen,
    PeriodSeen,
    PriceMeter,
    UsageReported,
)
from projectors.meters.recompute import Touched, recompute

T = TypeVar("T")


def newest(
    items: Iterable[T],
    key: Callable[[T], Hashable],
    order: Callable[[T], Any],
    *,
    least: bool = False,
) -> list[T]:
    """One item per key: the one with the greatest `order` (the least, with `least`)."""
    best: dict[Hashable, T] = {}
    for item in items:
        k = key(item)
        held = best.get(k)
        if held is None or (order(item) < order(held) if least else order(item) > order(held)):
            best[k] = item
    return list(best.values())


def merge_facts(facts: Iterable[UsageReported]) -> list[tuple[UsageReported, bool, bool]]:
    """Per identifier: the winning version (received when its first version was), whether
    any was a report, whether any a cancel."""
    merged: dict[str, tuple[UsageReported, bool, bool]] = {}
    for fact in facts:
        held = merged.get(fact.identifier)
        if held is None:
            merged[fact.identifier] = (fact, not fact.cancel, fact.cancel)
            continue
        winner, reported, cancelled = held
        received = min((r for r in (winner.received, fact.received) if r is not None), default=None)
        if _fact_rank(fact) < _fact_rank(winner):
            winner = fact
        if winner.received != received:
            winner = dataclasses.replace(winner, received=received)
        merged[fact.identifier] = (winner, reported or not fact.cancel, cancelled or fact.cancel)
    return list(merged.values())


def _fact_rank(fact: UsageReported) -> tuple[bool, int, Any, str, str]:
    # Smallest wins: a report before a cancel, then the earliest (time, value, name, customer).
    return (fact.cancel, fact.timestamp, fact.value, fact.event_name, fact.customer)


# One lock per schema (the live tables, a replay's shadow): taken by every batch first.
# A batch recomputes its rows from what it can see; run alongside another process's batch
# (several `lattice project` processes share the partitions of `usage.reported` and
# `stripe.events`, and one customer's facts and billing come through different ones), it
# would not see the other's uncommitted facts or periods and would write its stale row
# over theirs: usage lost until the next recompute of that customer. Batches of one
# schema therefore write one at a time, each seeing every batch committed before it.
SERIALIZE = (
    "SELECT pg_advisory_xact_lock(hashtextextended('lattice.meters:' || current_schema(), 0))"
)


async def apply(conn: asyncpg.Connection, changes: Sequence[Change]) -> None:
    """Write `changes` and recompute the reconciliation rows they reach."""
    await conn.execute(SERIALIZE)
    buckets: dict[type, list[Any]] = {}
    for change in changes:
        buckets.setdefault(type(change), []).append(change)
    touched = Touched()
    await _facts(conn, buckets.get(UsageReported, []), touched)
    await _meters(conn, buckets.get(MeterSeen, []), touched)
    await _prices(conn, buckets.get(PriceMeter, []), touched)
    await _periods(conn, buckets.get(PeriodSeen, []), touched)
    await _invoices(conn, buckets.get(InvoiceSeen, []), buckets.get(InvoiceLineSeen, []), touched)
    await _credit_notes(
        conn, buckets.get(CreditNoteSeen, []), buckets.get(CreditNoteLineSeen, []), touched
    )
    await _rejections(conn, buckets.get(FactRejected, []), buckets.get(ErrorReport, []), touched)
    await recompute(conn, touched)


async def _facts(conn: asyncpg.Connection, facts: list[UsageReported], touched: Touched) -> None:
    if not facts:
        return
    rows = merge_facts(facts)
    pairs = await conn.fetch(
        fact_queries.WRITE_FACTS,
        [f.identifier for f, _, _ in rows],
        [f.event_name for f, _, _ in rows],
        [f.customer for f, _, _ in rows],
        [str(f.value) for f, _, _ in rows],
        [f.timestamp for f, _, _ in rows],
        [reported for _, reported, _ in rows],
        [cancelled for _, _, cancelled in rows],
        [f.received for f, _, _ in rows],
    )
    for kind, customer, event_name in pairs:
        target = touched.added if kind == "added" else touched.facts
        target.add((customer, event_name))


async def _meters(conn: asyncpg.Connection, meters: list[MeterSeen], touched: Touched) -> None:
    if not meters:
        return
    rows = newest(meters, lambda m: m.id, lambda m: (m.created, m.event_id))
    await conn.execute(
        queries.UPSERT_METERS,
        [m.id for m in rows],
        [m.event_name for m in rows],
        [m.display_name for m in rows],
        [m.status for m in rows],
        [m.aggregation for m in rows],
        [m.event_id for m in rows],
        [m.created for m in rows],
        [m.event_time_window for m in rows],
    )
    touched.meters.update(m.id for m in rows)


async def _prices(conn: asyncpg.Connection, prices: list[PriceMeter], touched: Touched) -> None:
    if not prices:
        return
    rows = newest(prices, lambda p: p.price, lambda p: (p.created, p.event_id))
    changed = await conn.fetch(
        queries.UPSERT_PRICES,
        [p.price for p in rows],
        [p.meter for p in rows],
        [p.event_id for p in rows],
        [p.created for p in rows],
    )
    touched.prices.update(row["price"] for row in changed)


async def _periods(conn: asyncpg.Connection, periods: list[PeriodSeen], touched: Touched) -> None:
    if not periods:
        return

    # As UPSERT_PERIODS merges them: the end and subscription of an ended subscription's
    # snapshot over any other's (a cancellation stays, whatever snapshot of the period
    # comes after it: the final invoice's line, say), else of the newest; the newest event.
    def key(p: PeriodSeen) -> tuple[str, str, int]:
        return (p.customer, p.price, p.period_start)

    rows = newest(periods, key, lambda p: (p.ended, p.created, p.event_id))
    latest = {key(p): p for p in newest(periods, key, lambda p: (p.created, p.event_id))}
    events = [latest[key(p)] for p in rows]
    await conn.execute(
        queries.UPSERT_PERIODS,
        [p.customer for p in rows],
        [p.price for p in rows],
        [p.period_start for p in rows],
        [p.period_end for p in rows],
        [e.event_id for e in events],
        [e.created for e in events],
        [p.ended for p in rows],
        [p.subscription for p in rows],
    )
    touched.customers.update(p.customer for p in rows)


async def _invoices(
    conn: asyncpg.Connection,
    invoices: list[InvoiceSeen],
    lines: list[InvoiceLineSeen],
    touched: Touched,
) -> None:
    if invoices:
        rows = newest(invoices, lambda i: i.id, lambda i: (i.created, i.rank, i.event_id))
        await conn.execute(
            queries.UPSERT_INVOICES,
            [i.id for i in rows],
            [i.customer for i in rows],
            [i.status for i in rows],
            [i.rank for i in rows],
            [i.event_id for i in rows],
            [i.created for i in rows],
            [i.lines_complete for i in rows],
            [i.period_start for i in rows],
            [i.period_end for i in rows],
        )
        touched.customers.update(i.customer for i in rows)
    if lines:
        kept = newest(
            lines, lambda x: (x.invoice, x.line), lambda x: (x.created, x.rank, x.event_id)
        )
        await conn.execute(
            queries.UPSERT_LINES,
            [x.invoice for x in kept],
            [x.line for x in kept],
            [x.customer for x in kept],
            [x.price for x in kept],
            [x.quantity for x in kept],
            [x.period_start for x in kept],
            [x.period_end for x in kept],
            [x.rank for x in kept],
            [x.event_id for x in kept],
            [x.created for x in kept],
            [x.amount for x in kept],
        )
        touched.customers.update(x.customer for x in kept)


async def _credit_notes(
    conn: asyncpg.Connection,
    notes: list[CreditNoteSeen],
    lines: list[CreditNoteLineSeen],
    touched: Touched,
) -> None:
    if notes:
        # As UPSERT_CREDIT_NOTES: the newest event, voided if any snapshot says so, every
        # line seen if any snapshot carried them all.
        rows = newest(notes, lambda n: n.id, lambda n: (n.created, n.event_id))
        voided = {n.id for n in notes if n.voided}
        complete = {n.id for n in notes if n.lines_complete}
        await conn.execute(
            queries.UPSERT_CREDIT_NOTES,
            [n.id for n in rows],
            [n.invoice for n in rows],
            [n.customer for n in rows],
            [n.voided or n.id in voided for n in rows],
            [n.event_id for n in rows],
            [n.created for n in rows],
            [n.id in complete for n in rows],
        )
        touched.customers.update(n.customer for n in rows)
    if lines:
        # As INSERT_CREDIT_NOTE_LINES: the earliest copy.
        unique = newest(
            lines, lambda x: (x.credit_note, x.line), lambda x: (x.created, x.event_id), least=True
        )
        await conn.execute(
            queries.INSERT_CREDIT_NOTE_LINES,
            [x.credit_note for x in unique],
            [x.line for x in unique],
            [x.invoice for x in unique],
            [x.invoice_line for x in unique],
            [x.quantity for x in unique],
            [x.amount for x in unique],
            [x.event_id for x in unique],
            [x.created for x in unique],
        )


async def _rejections(
    conn: asyncpg.Connection,
    rejections: list[FactRejected],
    reports: list[ErrorReport],
    touched: Touched,
) -> None:
    if rejections:
        rows = newest(rejections, lambda r: r.identifier, lambda r: (r.created, r.event_id))
        await conn.execute(
            queries.UPSERT_REJECTIONS,
            [r.identifier for r in rows],
            [r.code for r in rows],
            [r.message for r in rows],
            [r.event_id for r in rows],
            [r.created for r in rows],
        )
        touched.rejected.update(r.identifier for r in rows)
    if reports:
        unique = newest(reports, lambda r: r.event_id, lambda r: 0)
        await conn.execute(
            queries.INSERT_ERROR_REPORTS,
            [r.event_id for r in unique],
            [r.type for r in unique],
            [r.meter for r in unique],
            [r.error_count for r in unique],
            [r.sampled for r in unique],
            [r.validation_start for r in unique],
            [r.validation_end for r in unique],
            [r.summary for r in unique],
            [r.created for r in unique],
        )
        await conn.execute(queries.UPDATE_UNATTRIBUTED, [r.event_id for r in unique])
