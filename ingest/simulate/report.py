"""Read the tables back after a simulation, compare them with its expected totals."""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from deploy.settings import Settings
from ingest.simulate.expected import Expected, InvoiceTotals

SAY_EVERY_S = 5.0  # how often a long wait for the projectors says how far behind they are

QUERIES = {
    "subscriptions": "SELECT status, count(*) FROM projections.subscriptions GROUP BY 1",
    "invoices": "SELECT status, currency, count(*), sum(total), sum(amount_paid), "
    "sum(amount_remaining) "
    "FROM projections.invoices GROUP BY 1, 2",
    "mrr": "SELECT currency, mrr FROM projections.mrr",
    "discrepancies": "SELECT customer, period_start, reported_value, rejected_value, "
    "billed_quantity, delta, status FROM projections.usage_discrepancies",
    "credited": "SELECT customer, period_start, billed_quantity, credited_quantity, delta, "
    "status FROM projections.meter_reconciliation WHERE credited_quantity <> 0",
    "balances": "SELECT account, currency, transferred, reversed, application_fees, "
    "refunded_fees, paid_out, net FROM projections.connect_balances",
    "events": "SELECT count(*) FROM projections.events",
    # Shown beside the discrepancies, not compared: errors Stripe counted beyond the
    # samples its reports list, which may be part of an `under_billed` row's delta.
    "unattributed": "SELECT customer, period_start, unattributed_rejections "
    "FROM projections.usage_discrepancies WHERE unattributed_rejections > 0",
}
# Row by row, in the shape of `Expected.objects` (times as Unix seconds).
OBJECT_QUERIES = {
    "subscriptions": "SELECT id, customer, status, current_period_start, current_period_end, "
    "trial_end, canceled_at, ended_at, cancel_at_period_end, latest_invoice "
    "FROM projections.subscriptions ORDER BY id",
    "subscription_items": "SELECT id, subscription, price, quantity, current_period_start, "
    "current_period_end FROM projections.subscription_items ORDER BY id",
    "invoices": "SELECT id, customer, subscription, status, currency, total, amount_paid, "
    "amount_remaining, attempt_count, paid_at, billing_reason, period_start, period_end, "
    "next_payment_attempt FROM projections.invoices ORDER BY id",
    "invoice_lines": "SELECT id, invoice, price, quantity, quantity_decimal, amount, proration, "
    "period_start, period_end, subscription FROM projections.invoice_lines ORDER BY id",
    "transfers": "SELECT id, destination, currency, amount, amount_reversed, "
    "source_transaction, transfer_group, reversed FROM projections.transfers ORDER BY id",
}
SHOWN_PER_TABLE = 3  # rows that differ, shown per table (a broken column breaks them all)


@dataclass(frozen=True, slots=True)
class Actual:
    """What the tables say, in the same shapes as `Expected`."""

    subscriptions: dict[str, int]
    # A currency is None where the table has NULL (an invoice sent by hand without one).
    invoices: dict[tuple[str, str | None], InvoiceTotals]
    mrr: dict[str | None, int]
    discrepancies: list[tuple[Any, ...]]
    credited: list[tuple[Any, ...]]
    balances: dict[tuple[str, str], tuple[int, ...]]
    events: int
    objects: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    # (customer, period start) -> rejections no report sample names (see QUERIES).
    unattributed: dict[tuple[str, int], int] = field(default_factory=dict)


async def read_tables(database_url: str) -> Actual:
    """Query the read models (a missing table reads as empty: its projector has not run)."""
    conn = await asyncpg.connect(database_url)
    try:
        rows: dict[str, list[asyncpg.Record]] = {}
        for name, sql in QUERIES.items():
            try:
                rows[name] = await conn.fetch(sql)
            except asyncpg.UndefinedTableError:
                rows[name] = []
        objects: dict[str, list[tuple[Any, ...]]] = {}
        for name, sql in OBJECT_QUERIES.items():
            try:
                # Sorted here, as `Expected.objects` is: a database's collation may order
                # mixed-case ids otherwise.
                objects[name] = sorted(tuple(map(_plain, r)) for r in await conn.fetch(sql))
            except asyncpg.UndefinedTableError:
                objects[name] = []
    finally:
        await conn.close()
    return Actual(
        subscriptions={r[0]: int(r[1]) for r in rows["subscriptions"]},
        invoices={
            (r[0], r[1]): InvoiceTotals(*(int(v or 0) for v in r[2:])) for r in rows["invoices"]
        },
        mrr={r[0]: int(r[1]) for r in rows["mrr"]},
        discrepancies=[
            (r[0], int(r[1].timestamp()), *(int(v) for v in r[2:6]), r[6])
            for r in rows["discrepancies"]
        ],
        credited=[
            (r[0], int(r[1].timestamp()), *(int(v) for v in r[2:5]), r[5]) for r in rows["credited"]
        ],
        balances={(r[0], r[1]): tuple(int(v) for v in r[2:]) for r in rows["balances"]},
        events=int(rows["events"][0][0]) if rows["events"] else 0,
        objects=objects,
        unattributed={(r[0], int(r[1].timestamp())): int(r[2]) for r in rows["unattributed"]},
    )


def _plain(value: Any) -> Any:
    """A column as `Expected.objects` has it: a time as Unix seconds."""
    return int(value.timestamp()) if isinstance(value, datetime) else value


def expected_as_actual(expected: Expected) -> Actual:
    """The expected totals in the shape `read_tables` returns, for comparison."""
    return Actual(
        subscriptions=dict(expected.subscriptions),
        # Comprehensions, not dict(): the keys widen to allow a NULL currency.
        invoices={key: totals for key, totals in expected.invoices.items()},  # noqa: C416
        mrr={currency: minor for currency, minor in expected.mrr.items()},  # noqa: C416
        discrepancies=[
            (
                r.customer,
                r.period_start,
                r.reported_value,
                r.rejected_value,
                r.billed_quantity,
                r.delta,
                r.status,
            )
            for r in expected.discrepancies
        ],
        credited=[
            (r.customer, r.period_start, r.billed_quantity, r.credited_quantity, r.delta, r.status)
            for r in expected.credited
        ],
        balances={
            key: (b.transferred, b.reversed, b.application_fees, b.refunded_fees, b.paid_out, b.net)
            for key, b in expected.balances.items()
        },
        events=expected.events,
        objects=expected.objects,
    )


def differences(expected: Expected, actual: Actual) -> list[str]:
    """Every part of the tables that disagrees with the simulation (empty when all agree)."""
    want = expected_as_actual(expected)
    wrong = []
    for name in ("subscriptions", "invoices", "mrr", "balances", "events"):
        if getattr(want, name) != getattr(actual, name):
            wrong.append(
                f"{name}: expected {getattr(want, name)}, tables say {getattr(actual, name)}"
            )
    if sorted(want.discrepancies) != sorted(actual.discrepancies):
        wrong.append(
            f"usage_discrepancies: expected {want.discrepancies}, tables say {actual.discrepancies}"
        )
    if sorted(want.credited) != sorted(actual.credited):
        wrong.append(f"credited usage: expected {want.credited}, tables say {actual.credited}")
    for table, rows in want.objects.items():
        wrong.extend(_row_differences(table, rows, actual.objects.get(table, [])))
    return wrong


def _row_differences(
    table: str, expected: list[tuple[Any, ...]], actual: list[tuple[Any, ...]]
) -> list[str]:
    """The rows of `table` that differ, keyed by id: a few shown, the rest counted."""
    want = {row[0]: row for row in expected}
    have = {row[0]: row for row in actual}
    wrong = [
        f"{table} {key}: expected {want.get(key)}, table has {have.get(key)}"
        for key in sorted(want.keys() | have.keys())
        if want.get(key) != have.get(key)
    ]
    if len(wrong) > SHOWN_PER_TABLE:
        wrong[SHOWN_PER_TABLE:] = [f"{table}: {len(wrong) - SHOWN_PER_TABLE} more rows differ"]
    return wrong


async def wait_caught_up(settings: Settings, *, timeout: float) -> tuple[int, int]:
    """Poll `lattice status` until every projector's lag is zero or `timeout` passes.

    Returns the last (lag, dead letters) summed over projectors and partitions.
    """
    from projectors import catalog, status  # the runtime owns positions and lag

    projections = catalog.select([])
    deadline = time.monotonic() + timeout
    said = time.monotonic()
    while True:
        rows = await status.collect(settings, projections)
        lag = sum(row.lag for row in rows)
        now = time.monotonic()
        if lag == 0 or now > deadline:
            return lag, sum(row.dead_letters for row in rows)
        if now - said >= SAY_EVERY_S:  # a wait of minutes (no projector running?) says so
            per: dict[str, int] = {}
            for row in rows:
                per[row.projector] = per.get(row.projector, 0) + row.lag
            behind = ", ".join(f"{name} {n}" for name, n in per.items() if n)
            print(
                f"waiting for the projectors: {behind} records behind, {deadline - now:.0f} s left",
                file=sys.stderr,
            )
            said = now
        await asyncio.sleep(0.5)


async def receiver_outcomes(url: str) -> dict[str, int]:
    """The receiver's own count of deliveries by outcome, from its `GET /metrics`."""
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.get(f"{url.rstrip('/')}/metrics")
        response.raise_for_status()
    outcomes: dict[str, int] = {}
    for family in text_string_to_metric_families(response.text):
        if family.name != "lattice_webhook_deliveries":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                outcome = sample.labels["outcome"]
                outcomes[outcome] = outcomes.get(outcome, 0) + int(sample.value)
    return outcomes
