"""Write invoice and invoice payment snapshots: one statement per table per batch.

As for subscriptions: the batch collapses to the newest snapshot per id, the upsert only
overwrites an older `version`, and the invoices that won get their lines replaced by the
winning snapshot's (also when `lines.has_more`: a row shows one snapshot, whole, so any
order of events leaves the same lines; `lines_complete = false` says more exist).

A line whose price object is not in the event (basil) takes its meter from
`invoice_price_meters`, filled from the events that show prices whole; a link seen after
its lines fills them in then, so the order of arrival does not show. Two processes may
write a price's first link and lines of that price at the same moment, neither seeing the
other's rows: for a price not linked yet, a batch writing lines takes a shared advisory
lock and one writing the link an exclusive one, so the second to commit sees the first.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from projectors.invoices.prices import PriceMeter
from projectors.invoices.reducer import Change, InvoiceSnapshot, PaymentSnapshot
from projectors.subscriptions.snapshot import newest

UPSERT_INVOICES = """
INSERT INTO invoices AS t (
    id, customer, account, subscription, status, deleted, billing_reason, collection_method,
    currency, total, amount_due, amount_paid, amount_remaining, attempt_count,
    next_payment_attempt, due_date, period_start, period_end, paid_at, finalized_at,
    voided_at, number, created, livemode, lines_complete,
    version, last_event_id, last_event_created)
SELECT x.id, x.customer, x.account, x.subscription, x.status, x.deleted, x.billing_reason,
    x.collection_method, x.currency, x.total, x.amount_due, x.amount_paid, x.amount_remaining,
    x.attempt_count, to_timestamp(x.next_payment_attempt), to_timestamp(x.due_date),
    to_timestamp(x.period_start), to_timestamp(x.period_end), to_timestamp(x.paid_at),
    to_timestamp(x.finalized_at), to_timestamp(x.voided_at), x.number, to_timestamp(x.created),
    x.livemode, x.lines_complete, x.version, x.event_id, to_timestamp(x.event_created)
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::boolean[],
            $7::text[], $8::text[], $9::text[], $10::bigint[], $11::bigint[], $12::bigint[],
            $13::bigint[], $14::integer[], $15::bigint[], $16::bigint[], $17::bigint[],
            $18::bigint[], $19::bigint[], $20::bigint[], $21::bigint[], $22::text[],
            $23::bigint[], $24::boolean[], $25::boolean[], $26::text[], $27::text[],
            $28::bigint[])
    AS x(id, customer, account, subscription, status, deleted, billing_reason,
         collection_method, currency, total, amount_due, amount_paid, amount_remaining,
         attempt_count, next_payment_attempt, due_date, period_start, period_end, paid_at,
         finalized_at, voided_at, number, created, livemode, lines_complete,
         version, event_id, event_created)
ON CONFLICT (id) DO UPDATE SET
    customer = excluded.customer, account = excluded.account,
    subscription = excluded.subscription, status = excluded.status,
    deleted = excluded.deleted, billing_reason = excluded.billing_reason,
    collection_method = excluded.collection_method, currency = excluded.currency,
    total = excluded.total, amount_due = excluded.amount_due,
    amount_paid = excluded.amount_paid, amount_remaining = excluded.amount_remaining,
    attempt_count = excluded.attempt_count,
    next_payment_attempt = excluded.next_payment_attempt, due_date = excluded.due_date,
    period_start = excluded.period_start, period_end = excluded.period_end,
    paid_at = excluded.paid_at, finalized_at = excluded.finalized_at,
    voided_at = excluded.voided_at, number = excluded.number, created = excluded.created,
    livemode = excluded.livemode, lines_complete = excluded.lines_complete,
    version = excluded.version, last_event_id = excluded.last_event_id,
    last_event_created = excluded.last_event_created
WHERE t.version < excluded.version
RETURNING t.id
"""

# The greatest `failed_attempts` wins whatever the versions: a failure stays seen when a
# newer snapshot (a retry under way) came first. Runs after the upsert, so the row exists.
RECORD_FAILURES = """
UPDATE invoices t SET failed_attempts = x.n
FROM unnest($1::text[], $2::integer[]) AS x(id, n)
WHERE t.id = x.id AND t.failed_attempts < x.n
"""

DELETE_LINES = "DELETE FROM invoice_lines WHERE invoice = ANY($1::text[])"

INSERT_LINES = """
INSERT INTO invoice_lines AS t (
    id, invoice, subscription, subscription_item, price, product, meter, quantity,
    quantity_decimal, amount, currency, proration, period_start, period_end, last_event_id,
    last_event_created)
SELECT x.id, x.invoice, x.subscription, x.subscription_item, x.price, x.product,
    coalesce(x.meter, pm.meter), x.quantity, x.quantity_decimal, x.amount, x.currency,
    x.proration, to_timestamp(x.period_start), to_timestamp(x.period_end), x.event_id,
    to_timestamp(x.event_created)
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::bigint[], $9::bigint[], $10::text[], $11::boolean[],
            $12::bigint[], $13::bigint[], $14::text[], $15::bigint[], $16::numeric[])
    AS x(id, invoice, subscription, subscription_item, price, product, meter, quantity,
         amount, currency, proration, period_start, period_end, event_id, event_created,
         quantity_decimal)
LEFT JOIN invoice_price_meters pm ON pm.price = x.price
ON CONFLICT (id) DO UPDATE SET
    invoice = excluded.invoice, subscription = excluded.subscription,
    subscription_item = excluded.subscription_item, price = excluded.price,
    product = excluded.product, meter = excluded.meter, quantity = excluded.quantity,
    quantity_decimal = excluded.quantity_decimal, amount = excluded.amount,
    currency = excluded.currency, proration = excluded.proration,
    period_start = excluded.period_start, period_end = excluded.period_end,
    last_event_id = excluded.last_event_id, last_event_created = excluded.last_event_created
"""

# A price's meter never changes: the first link is kept, naming the earliest event that
# showed it. Returns the prices linked now for the first time, whose lines already kept
# get their meter from FILL_METERS (through the index of lines without a meter).
# Links already kept from an event as early are left out before the upsert: ON CONFLICT DO
# UPDATE would lock their rows even when its WHERE is false, and every subscription event
# names its metered prices again (two processes would take turns on the popular ones).
INSERT_PRICE_METERS = """
WITH before AS (SELECT price FROM invoice_price_meters WHERE price = ANY($1::text[]))
INSERT INTO invoice_price_meters AS t (price, meter, last_event_id, last_event_created)
SELECT p, m, ev, to_timestamp(cr)
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS x(p, m, ev, cr)
WHERE NOT EXISTS (
    SELECT 1 FROM invoice_price_meters k
    WHERE k.price = x.p
      AND (k.last_event_created, k.last_event_id COLLATE "C") <= (to_timestamp(x.cr), x.ev)
)
ON CONFLICT (price) DO UPDATE SET
    last_event_id = excluded.last_event_id, last_event_created = excluded.last_event_created
WHERE (excluded.last_event_created, excluded.last_event_id COLLATE "C")
    < (t.last_event_created, t.last_event_id COLLATE "C")
RETURNING price, price NOT IN (SELECT price FROM before) AS linked
"""

LINKED = "SELECT price FROM invoice_price_meters WHERE price = ANY($1::text[])"

# Exclusive ($2 true) or shared, in one order for every process (no deadlock among them).
# One lock space per schema (a replay's shadow does not wait for the live tables), and at
# most 256 keys in it, whatever the number of prices: two prices sharing a key only wait.
LOCK_PRICES = """
SELECT CASE WHEN x THEN pg_advisory_xact_lock(space, k)::text
            ELSE pg_advisory_xact_lock_shared(space, k)::text END
FROM (SELECT hashtext('lattice.invoice_price_meters:' || current_schema()) AS space,
             hashtext(p) & 255 AS k, bool_or(x) AS x
      FROM unnest($1::text[], $2::boolean[]) AS u(p, x) GROUP BY 1, 2 ORDER BY 2) s
"""

FILL_METERS = """
UPDATE invoice_lines l SET meter = pm.meter
FROM invoice_price_meters pm
WHERE pm.price = ANY($1::text[]) AND l.price = pm.price AND l.meter IS NULL
"""

UPSERT_PAYMENTS = """
INSERT INTO invoice_payments AS t (
    id, invoice, status, amount_paid, amount_requested, currency, paid_at, is_default,
    account, livemode, version, last_event_id, last_event_created)
SELECT x.id, x.invoice, x.status, x.amount_paid, x.amount_requested, x.currency,
    to_timestamp(x.paid_at), x.is_default, x.account, x.livemode, x.version, x.event_id,
    to_timestamp(x.event_created)
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::text[],
            $7::bigint[], $8::boolean[], $9::text[], $10::boolean[], $11::text[],
            $12::text[], $13::bigint[])
    AS x(id, invoice, status, amount_paid, amount_requested, currency, paid_at, is_default,
         account, livemode, version, event_id, event_created)
ON CONFLICT (id) DO UPDATE SET
    invoice = excluded.invoice, status = excluded.status,
    amount_paid = excluded.amount_paid, amount_requested = excluded.amount_requested,
    currency = excluded.currency, paid_at = excluded.paid_at,
    is_default = excluded.is_default, account = excluded.account,
    livemode = excluded.livemode, version = excluded.version,
    last_event_id = excluded.last_event_id, last_event_created = excluded.last_event_created
WHERE t.version < excluded.version
"""


async def apply(conn: asyncpg.Connection, changes: Sequence[Change]) -> None:
    """Write a batch of snapshots in the caller's transaction."""
    invoices = newest(c for c in changes if isinstance(c, InvoiceSnapshot))
    payments = newest(c for c in changes if isinstance(c, PaymentSnapshot))
    # One per price, the earliest event (as INSERT_PRICE_METERS); by price, so that two
    # processes inserting the same links take their row locks in order.
    earliest: dict[str, PriceMeter] = {}
    for c in changes:
        if isinstance(c, PriceMeter):
            held = earliest.get(c.price)
            if held is None or (c.created, c.event_id) < (held.created, held.event_id):
                earliest[c.price] = c
    links = [earliest[price] for price in sorted(earliest)]
    await _lock_unlinked(conn, links, invoices)
    if links:
        # Before the lines: this batch's lines take their meter from the links as inserted.
        written = await conn.fetch(
            INSERT_PRICE_METERS,
            [c.price for c in links],
            [c.meter for c in links],
            [c.event_id for c in links],
            [c.created for c in links],
        )
        linked = [row["price"] for row in written if row["linked"]]
        if linked:
            await conn.execute(FILL_METERS, linked)
    if invoices:
        await _write_invoices(conn, invoices)
        await _record_failures(conn, changes)
    if payments:
        await conn.execute(
            UPSERT_PAYMENTS,
            [p.id for p in payments],
            [p.invoice for p in payments],
            [p.status for p in payments],
            [p.amount_paid for p in payments],
            [p.amount_requested for p in payments],
            [p.currency for p in payments],
            [p.paid_at for p in payments],
            [p.is_default for p in payments],
            [p.account for p in payments],
            [p.livemode for p in payments],
            [p.version for p in payments],
            [p.event_id for p in payments],
            [p.event_created for p in payments],
        )


async def _lock_unlinked(
    conn: asyncpg.Connection, links: list[PriceMeter], invoices: list[InvoiceSnapshot]
) -> None:
    """For the prices not linked yet: exclusive for this batch's links, shared for its
    lines that name a price by id alone (see the module's docstring); none once a price is
    linked. A line that showed its price whole knows its meter (or that it has none)."""
    linking = {c.price for c in links}
    unmetered = {
        ln.price
        for inv in invoices
        for ln in inv.lines
        if ln.price is not None and not ln.meter and not ln.price_shown
    }
    prices = sorted(linking | unmetered)
    if not prices:
        return
    known = {row["price"] for row in await conn.fetch(LINKED, prices)}
    pending = [price for price in prices if price not in known]
    if pending:
        await conn.execute(LOCK_PRICES, pending, [price in linking for price in pending])


async def _record_failures(conn: asyncpg.Connection, changes: Sequence[Change]) -> None:
    """Every failure in the batch counts, not only the winning snapshot's."""
    failed: dict[str, int] = {}
    for c in changes:
        if isinstance(c, InvoiceSnapshot) and c.failed_attempts > failed.get(c.id, 0):
            failed[c.id] = c.failed_attempts
    if failed:
        await conn.execute(RECORD_FAILURES, list(failed), list(failed.values()))


async def _write_invoices(conn: asyncpg.Connection, invoices: list[InvoiceSnapshot]) -> None:
    won = await conn.fetch(
        UPSERT_INVOICES,
        [i.id for i in invoices],
        [i.customer for i in invoices],
        [i.account for i in invoices],
        [i.subscription for i in invoices],
        [i.status for i in invoices],
        [i.deleted for i in invoices],
        [i.billing_reason for i in invoices],
        [i.collection_method for i in invoices],
        [i.currency for i in invoices],
        [i.total for i in invoices],
        [i.amount_due for i in invoices],
        [i.amount_paid for i in invoices],
        [i.amount_remaining for i in invoices],
        [i.attempt_count for i in invoices],
        [i.next_payment_attempt for i in invoices],
        [i.due_date for i in invoices],
        [i.period_start for i in invoices],
        [i.period_end for i in invoices],
        [i.paid_at for i in invoices],
        [i.finalized_at for i in invoices],
        [i.voided_at for i in invoices],
        [i.number for i in invoices],
        [i.created for i in invoices],
        [i.livemode for i in invoices],
        [i.lines_complete for i in invoices],
        [i.version for i in invoices],
        [i.event_id for i in invoices],
        [i.event_created for i in invoices],
    )
    if not won:
        return
    winners = {row["id"] for row in won}
    await conn.execute(DELETE_LINES, list(winners))
    # One line id once per statement (ON CONFLICT cannot touch a row twice).
    lines = {line.id: (inv, line) for inv in invoices if inv.id in winners for line in inv.lines}
    if not lines:
        return
    pairs = list(lines.values())
    await conn.execute(
        INSERT_LINES,
        [ln.id for _, ln in pairs],
        [inv.id for inv, _ in pairs],
        [ln.subscription for _, ln in pairs],
        [ln.subscription_item for _, ln in pairs],
        [ln.price for _, ln in pairs],
        [ln.product for _, ln in pairs],
        [ln.meter for _, ln in pairs],
        [ln.quantity for _, ln in pairs],
        [ln.amount for _, ln in pairs],
        [ln.currency for _, ln in pairs],
        [ln.proration for _, ln in pairs],
        [ln.period_start for _, ln in pairs],
        [ln.period_end for _, ln in pairs],
        [inv.event_id for inv, _ in pairs],
        [inv.event_created for inv, _ in pairs],
        [ln.quantity_decimal for _, ln in pairs],
    )
