"""Write subscription and customer snapshots: one statement per table per batch.

The batch first collapses to the newest snapshot per id; each upsert then only overwrites
a row whose `version` is older (`WHERE t.version < excluded.version`), and `RETURNING`
names the subscriptions that won, whose items are replaced by the winning snapshot's.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from projectors.subscriptions.reducer import Change, CustomerSnapshot, SubscriptionSnapshot
from projectors.subscriptions.snapshot import newest

UPSERT_SUBSCRIPTIONS = """
INSERT INTO subscriptions AS t (
    id, customer, account, status, cancel_at_period_end, cancel_at,
    current_period_start, current_period_end, trial_start, trial_end, canceled_at, ended_at,
    latest_invoice, collection_method, currency, created, livemode,
    version, last_event_id, last_event_created, pause_collection, items_complete)
SELECT x.id, x.customer, x.account, x.status, x.cancel_at_period_end, to_timestamp(x.cancel_at),
    to_timestamp(x.cps), to_timestamp(x.cpe), to_timestamp(x.trial_start),
    to_timestamp(x.trial_end), to_timestamp(x.canceled_at), to_timestamp(x.ended_at),
    x.latest_invoice, x.collection_method, x.currency, to_timestamp(x.created), x.livemode,
    x.version, x.event_id, to_timestamp(x.event_created), x.pause_collection, x.items_complete
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::boolean[], $6::bigint[],
            $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[],
            $13::text[], $14::text[], $15::text[], $16::bigint[], $17::boolean[],
            $18::text[], $19::text[], $20::bigint[], $21::text[], $22::boolean[])
    AS x(id, customer, account, status, cancel_at_period_end, cancel_at, cps, cpe,
         trial_start, trial_end, canceled_at, ended_at, latest_invoice, collection_method,
         currency, created, livemode, version, event_id, event_created, pause_collection,
         items_complete)
ON CONFLICT (id) DO UPDATE SET
    customer = excluded.customer, account = excluded.account, status = excluded.status,
    cancel_at_period_end = excluded.cancel_at_period_end, cancel_at = excluded.cancel_at,
    current_period_start = excluded.current_period_start,
    current_period_end = excluded.current_period_end,
    trial_start = excluded.trial_start, trial_end = excluded.trial_end,
    canceled_at = excluded.canceled_at, ended_at = excluded.ended_at,
    latest_invoice = excluded.latest_invoice, collection_method = excluded.collection_method,
    currency = excluded.currency, created = excluded.created, livemode = excluded.livemode,
    version = excluded.version, last_event_id = excluded.last_event_id,
    last_event_created = excluded.last_event_created,
    pause_collection = excluded.pause_collection, items_complete = excluded.items_complete
WHERE t.version < excluded.version
RETURNING t.id
"""

DELETE_ITEMS = "DELETE FROM subscription_items WHERE subscription = ANY($1::text[])"

INSERT_ITEMS = """
INSERT INTO subscription_items AS t (
    id, subscription, price, product, quantity, unit_amount, currency, interval, interval_count,
    usage_type, meter, current_period_start, current_period_end,
    last_event_id, last_event_created, unit_amount_decimal, transform_divide_by,
    transform_round)
SELECT x.id, x.subscription, x.price, x.product, x.quantity, x.unit_amount, x.currency,
    x.interval, x.interval_count, x.usage_type, x.meter, to_timestamp(x.cps),
    to_timestamp(x.cpe), x.event_id, to_timestamp(x.event_created), x.exact, x.divide_by,
    x.round
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[],
            $7::text[], $8::text[], $9::integer[], $10::text[], $11::text[], $12::bigint[],
            $13::bigint[], $14::text[], $15::bigint[], $16::numeric[], $17::bigint[],
            $18::text[])
    AS x(id, subscription, price, product, quantity, unit_amount, currency, interval,
         interval_count, usage_type, meter, cps, cpe, event_id, event_created, exact,
         divide_by, round)
ON CONFLICT (id) DO UPDATE SET
    subscription = excluded.subscription, price = excluded.price, product = excluded.product,
    quantity = excluded.quantity, unit_amount = excluded.unit_amount,
    currency = excluded.currency, interval = excluded.interval,
    interval_count = excluded.interval_count, usage_type = excluded.usage_type,
    meter = excluded.meter, current_period_start = excluded.current_period_start,
    current_period_end = excluded.current_period_end, last_event_id = excluded.last_event_id,
    last_event_created = excluded.last_event_created,
    unit_amount_decimal = excluded.unit_amount_decimal,
    transform_divide_by = excluded.transform_divide_by, transform_round = excluded.transform_round
"""

UPSERT_CUSTOMERS = """
INSERT INTO customers AS t (
    id, email, name, delinquent, deleted, account, created, livemode,
    version, last_event_id, last_event_created)
SELECT x.id, x.email, x.name, x.delinquent, x.deleted, x.account, to_timestamp(x.created),
    x.livemode, x.version, x.event_id, to_timestamp(x.event_created)
FROM unnest($1::text[], $2::text[], $3::text[], $4::boolean[], $5::boolean[], $6::text[],
            $7::bigint[], $8::boolean[], $9::text[], $10::text[], $11::bigint[])
    AS x(id, email, name, delinquent, deleted, account, created, livemode,
         version, event_id, event_created)
ON CONFLICT (id) DO UPDATE SET
    email = excluded.email, name = excluded.name, delinquent = excluded.delinquent,
    deleted = excluded.deleted, account = excluded.account, created = excluded.created,
    livemode = excluded.livemode, version = excluded.version,
    last_event_id = excluded.last_event_id, last_event_created = excluded.last_event_created
WHERE t.version < excluded.version
"""


async def apply(conn: asyncpg.Connection, changes: Sequence[Change]) -> None:
    """Write a batch of snapshots in the caller's transaction."""
    subs = newest(c for c in changes if isinstance(c, SubscriptionSnapshot))
    customers = newest(c for c in changes if isinstance(c, CustomerSnapshot))
    if subs:
        await _write_subscriptions(conn, subs)
    if customers:
        await conn.execute(
            UPSERT_CUSTOMERS,
            [c.id for c in customers],
            [c.email for c in customers],
            [c.name for c in customers],
            [c.delinquent for c in customers],
            [c.deleted for c in customers],
            [c.account for c in customers],
            [c.created for c in customers],
            [c.livemode for c in customers],
            [c.version for c in customers],
            [c.event_id for c in customers],
            [c.event_created for c in customers],
        )


async def _write_subscriptions(conn: asyncpg.Connection, subs: list[SubscriptionSnapshot]) -> None:
    won = await conn.fetch(
        UPSERT_SUBSCRIPTIONS,
        [s.id for s in subs],
        [s.customer for s in subs],
        [s.account for s in subs],
        [s.status for s in subs],
        [s.cancel_at_period_end for s in subs],
        [s.cancel_at for s in subs],
        [s.current_period_start for s in subs],
        [s.current_period_end for s in subs],
        [s.trial_start for s in subs],
        [s.trial_end for s in subs],
        [s.canceled_at for s in subs],
        [s.ended_at for s in subs],
        [s.latest_invoice for s in subs],
        [s.collection_method for s in subs],
        [s.currency for s in subs],
        [s.created for s in subs],
        [s.livemode for s in subs],
        [s.version for s in subs],
        [s.event_id for s in subs],
        [s.event_created for s in subs],
        [s.pause_collection for s in subs],
        [s.items_complete for s in subs],
    )
    if not won:
        return
    winners = {row["id"] for row in won}
    await conn.execute(DELETE_ITEMS, list(winners))
    # One item id once per statement (ON CONFLICT cannot touch a row twice).
    items = {item.id: (sub, item) for sub in subs if sub.id in winners for item in sub.items}
    if not items:
        return
    pairs = list(items.values())
    await conn.execute(
        INSERT_ITEMS,
        [i.id for _, i in pairs],
        [s.id for s, _ in pairs],
        [i.price for _, i in pairs],
        [i.product for _, i in pairs],
        [i.quantity for _, i in pairs],
        [i.unit_amount for _, i in pairs],
        [i.currency for _, i in pairs],
        [i.interval for _, i in pairs],
        [i.interval_count for _, i in pairs],
        [i.usage_type for _, i in pairs],
        [i.meter for _, i in pairs],
        [i.current_period_start for _, i in pairs],
        [i.current_period_end for _, i in pairs],
        [s.event_id for s, _ in pairs],
        [s.event_created for s, _ in pairs],
        [i.unit_amount_decimal for _, i in pairs],
        [i.transform_divide_by for _, i in pairs],
        [i.transform_round for _, i in pairs],
    )
