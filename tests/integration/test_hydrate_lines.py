"""Lines a webhook cut short (`lines.has_more`), fetched from the fake Stripe API under
the meters projection's batch step and cached in PostgreSQL: the periods they bill or
credit are judged instead of left `incomplete`."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from aiokafka import TopicPartition

from projectors.base import HydrationUnavailable, Record
from projectors.meters import projection as meters
from projectors.migrate import ensure_runtime, migrate
from projectors.stripe_api.hydrate import Hydrator
from tests.fixtures.stripe_objects import (
    MONTH,
    T0,
    Era,
    credit_note,
    credit_note_line,
    event,
    invoice_line,
)
from tests.integration.test_hydrate import fake, make_client, meters_applier, pool
from tests.integration.test_meters_store import fetch, finalized_invoice
from tests.support.fake_stripe import FakeStripe
from tests.support.meter_payloads import stripe_record
from tests.support.meter_scenario import billing_month

pytestmark = pytest.mark.integration
__all__ = ["fake", "pool"]  # fixtures, imported to be used here

TP = TopicPartition("stripe.events", 0)


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    await ensure_runtime(connection)
    await connection.execute("DELETE FROM lattice.hydrated_lines")
    yield connection
    await connection.close()


async def project(
    conn: asyncpg.Connection, schema: str, hydrator: Hydrator, batches: Sequence[Sequence[Record]]
) -> None:
    """Each batch through the runner's batch step (hydrating what it asks for), then
    applied in its own transaction to a fresh `schema`."""
    await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    await migrate(conn, [meters], schema=schema, record=False)
    applier = meters_applier(hydrator.pool, hydrator, asyncio.Event())
    for batch in batches:
        prepared = await asyncio.wait_for(applier.prepare({TP: list(batch)}), 30)
        assert prepared.dead == []
        async with conn.transaction():
            await conn.execute(f'SET LOCAL search_path TO "{schema}", public')
            await meters.apply(conn, [c for _, changes in prepared.reduced for c in changes])


def first_page(obj: dict[str, Any], keep: list[dict[str, Any]]) -> dict[str, Any]:
    """`obj` as a webhook shows it when its lines do not fit: `keep`, and `has_more`."""
    return dict(obj, lines=dict(obj["lines"], data=keep, has_more=True))


STATUS = (
    "SELECT customer, status, delta, unseen_credits FROM meter_reconciliation "
    "WHERE customer = '{}' AND meter = '{}'"
)


async def test_an_invoices_metered_line_on_a_later_page_is_fetched_once(
    conn: asyncpg.Connection, fake: FakeStripe, pool: asyncpg.Pool
) -> None:
    scenario = billing_month()
    legacy = finalized_invoice(scenario, "cus_legacy")
    (metered,) = legacy["lines"]["data"]
    seat = invoice_line(era="legacy", invoice=legacy["id"])  # a licensed price's line
    paid = dict(first_page(legacy, [seat]), status="paid")
    paid_event = stripe_record(event("invoice.paid", paid, created=T0 + MONTH + 600, era="legacy"))
    fake.add_lines(legacy["id"], [seat, metered])
    query = STATUS.format("cus_legacy", scenario.meters["sum"])

    # Without a key the page is all there is: the period cannot be judged.
    await project(conn, "lines_unknown", Hydrator(pool, None), [scenario.records(), [paid_event]])
    assert await fetch(conn, "lines_unknown", query) == [
        ("cus_legacy", "incomplete", Decimal("3.5"), False)  # nothing billed seen
    ]
    assert fake.requests_to("/v1/invoices/") == []

    async with make_client(fake) as client:
        hydrator = Hydrator(pool, client)
        for schema in ("lines_fetched", "lines_cached"):
            await project(conn, schema, hydrator, [scenario.records(), [paid_event]])
            assert await fetch(conn, schema, query) == [
                ("cus_legacy", "under_billed", Decimal("1.5"), False)
            ], schema
    (seen,) = fake.requests_to("/v1/invoices/")  # once: the second run read the cache
    assert seen.path == f"/v1/invoices/{legacy['id']}/lines"
    assert ("limit", "100") in seen.query


async def test_an_invoice_event_written_back_without_its_headers_is_completed_too(
    conn: asyncpg.Connection, fake: FakeStripe, pool: asyncpg.Pool
) -> None:
    """A dead letter written back to the log by hand (a console producer sends no
    headers): its lines are fetched as the original delivery's would have been."""
    scenario = billing_month()
    legacy = finalized_invoice(scenario, "cus_legacy")
    (metered,) = legacy["lines"]["data"]
    seat = invoice_line(era="legacy", invoice=legacy["id"])
    paid = dict(first_page(legacy, [seat]), status="paid")
    record = stripe_record(event("invoice.paid", paid, created=T0 + MONTH + 600, era="legacy"))
    bare = dataclasses.replace(record, headers={})
    fake.add_lines(legacy["id"], [seat, metered])

    async with make_client(fake) as client:
        await project(conn, "lines_bare", Hydrator(pool, client), [scenario.records(), [bare]])
    query = STATUS.format("cus_legacy", scenario.meters["sum"])
    assert await fetch(conn, "lines_bare", query) == [
        ("cus_legacy", "under_billed", Decimal("1.5"), False)
    ]


async def test_a_credit_notes_lines_are_fetched_page_by_page_in_its_account(
    conn: asyncpg.Connection, fake: FakeStripe, pool: asyncpg.Pool
) -> None:
    """cus_basil's invoice billed its usage in full; a credit note's first page shows only
    a custom line, its second gives a unit of the `sum` line back: `credited`, judged."""
    scenario = billing_month()
    basil = finalized_invoice(scenario, "cus_basil")
    sum_line = basil["lines"]["data"][0]
    custom = [credit_note_line() for _ in range(100)]  # a whole page of them
    unit = credit_note_line(invoice_line_item=sum_line["id"], quantity=1, amount=100)
    note = credit_note(invoice=basil["id"], customer="cus_basil", lines=[*custom, unit])
    created = event("credit_note.created", first_page(note, custom[:10]), created=T0 + MONTH + 300)
    created["account"] = "acct_1Nv0FGQ9RKHgCVdK"  # a Connect account's note
    fake.add_lines(note["id"], [*custom, unit], account="acct_1Nv0FGQ9RKHgCVdK")

    async with make_client(fake) as client:
        await project(
            conn,
            "credit_fetched",
            Hydrator(pool, client),
            [scenario.records(), [stripe_record(created)]],
        )
    rows = await fetch(conn, "credit_fetched", STATUS.format("cus_basil", scenario.meters["sum"]))
    assert rows == [("cus_basil", "credited", Decimal(1), False)]
    pages = fake.requests_to("/v1/credit_notes/")
    assert [dict(p.query).get("starting_after") for p in pages] == [None, custom[-1]["id"]]
    assert {p.headers.get("stripe-account") for p in pages} == {"acct_1Nv0FGQ9RKHgCVdK"}


async def test_lines_stripe_will_not_give_are_asked_once_and_a_refused_key_waits(
    conn: asyncpg.Connection, fake: FakeStripe, pool: asyncpg.Pool
) -> None:
    """Stripe knows no such invoice (404): the event as it came, and that answer cached,
    so the next event of that invoice (or a replay) asks nothing. A key refused for the
    platform's own invoice (403: a restricted key without read access) is the key's fault:
    the projector waits, the record is never taken as it came."""
    scenario = billing_month()
    legacy = finalized_invoice(scenario, "cus_legacy")
    paid = dict(first_page(legacy, legacy["lines"]["data"]), status="paid")
    record = stripe_record(event("invoice.paid", paid, created=T0 + MONTH + 600, era="legacy"))
    async with make_client(fake) as client:
        hydrator = Hydrator(pool, client)
        assert (await hydrator(record)).value == record.value
        assert (await hydrator(record)).value == record.value
        assert len(fake.requests_to("/v1/invoices/")) == 1

        other = finalized_invoice(billing_month(), "cus_basil")
        cut = dict(first_page(other, other["lines"]["data"][:1]), status="paid")
        refused = stripe_record(event("invoice.paid", cut, created=T0 + MONTH + 600))
        fake.add_lines(other["id"], other["lines"]["data"])
        fake.fail_next(1, status=403)
        with pytest.raises(HydrationUnavailable, match="read access to invoices"):
            await hydrator(refused)
        # Once the key may read invoices, the same record gets its lines.
        whole = await hydrator(refused)
        assert len(whole.json()["data"]["object"]["lines"]["data"]) == 3


async def test_a_fetch_stripe_rate_limited_goes_on_from_the_last_page_had(
    conn: asyncpg.Connection, fake: FakeStripe, pool: asyncpg.Pool
) -> None:
    """Stripe answers two pages, then 429 until the client gives up: the projector waits,
    and its next try asks for the third page, not the first two again."""
    scenario = billing_month()
    legacy = finalized_invoice(scenario, "cus_legacy")
    lines = [invoice_line(era="legacy", invoice=legacy["id"]) for _ in range(250)]
    paid = dict(first_page(legacy, lines[:10]), status="paid")
    record = stripe_record(event("invoice.paid", paid, created=T0 + MONTH + 600, era="legacy"))
    fake.add_lines(legacy["id"], lines)
    fake.fail_next(2, status=None)  # two pages answered
    fake.fail_next(3, status=429, headers={"Retry-After": "0"})  # then the client gives up
    async with make_client(fake) as client:
        hydrator = Hydrator(pool, client)
        with pytest.raises(HydrationUnavailable, match="429"):
            await hydrator(record)
        whole = await hydrator(record)

    assert [ln["id"] for ln in whole.json()["data"]["object"]["lines"]["data"]] == [
        ln["id"] for ln in lines
    ]
    asked = [dict(p.query).get("starting_after") for p in fake.requests_to("/v1/invoices/")]
    assert asked == [None, lines[99]["id"], *[lines[199]["id"]] * 4]


async def test_a_connected_accounts_refusal_is_not_kept(
    conn: asyncpg.Connection, fake: FakeStripe, pool: asyncpg.Pool
) -> None:
    """A connected account that refuses us (403: access revoked, or the key lacks Connect
    read access) leaves the event as it came, and is asked again by the object's next
    event: the refusal can be fixed, unlike a 404."""
    scenario = billing_month()
    basil = finalized_invoice(scenario, "cus_basil")
    cut = dict(first_page(basil, basil["lines"]["data"][:1]), status="paid")
    paid = event("invoice.paid", cut, created=T0 + MONTH + 600)
    paid["account"] = "acct_1Nv0FGQ9RKHgCVdK"
    record = stripe_record(paid)
    fake.add_lines(basil["id"], basil["lines"]["data"], account="acct_1Nv0FGQ9RKHgCVdK")
    async with make_client(fake) as client:
        hydrator = Hydrator(pool, client)
        fake.fail_next(1, status=403)
        assert (await hydrator(record)).value == record.value
        whole = await hydrator(record)
    assert len(whole.json()["data"]["object"]["lines"]["data"]) == 3
    assert len(fake.requests_to("/v1/invoices/")) == 2


def in_era(line: dict[str, Any], era: Era, prices: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`line` as Stripe's API would give it under the other era's version: the same id,
    price, quantity, amount and period, in `era`'s shape."""
    price_id = line["price"]["id"] if "price" in line else line["pricing"]["price_details"]["price"]
    details = line.get("parent") or {}
    subscription = line.get("subscription") or (
        (details.get("subscription_item_details") or {}).get("subscription")
    )
    return invoice_line(
        era=era,
        invoice=line["invoice"],
        subscription=subscription,
        line_price=prices[price_id],
        quantity=line["quantity"],
        amount=line["amount"],
        period_start=line["period"]["start"],
        period_end=line["period"]["end"],
        id=line["id"],
    )


@pytest.mark.parametrize(("customer", "served"), [("cus_legacy", "basil"), ("cus_basil", "legacy")])
async def test_lines_fetched_in_the_other_eras_shape_are_judged_the_same(
    conn: asyncpg.Connection, fake: FakeStripe, pool: asyncpg.Pool, customer: str, served: Era
) -> None:
    """The API answers in `LATTICE_STRIPE_API_VERSION`'s shape, not the webhook's: a
    legacy invoice's lines may come back basil-shaped and the other way round. Every
    meter's row is what the whole invoice in its webhook would have given."""
    scenario = billing_month()
    prices = {
        item["price"]["id"]: item["price"]
        for e in scenario.stripe_events
        if e["type"] == "customer.subscription.created"
        for item in e["data"]["object"]["items"]["data"]
    }
    whole = dict(finalized_invoice(scenario, customer), status="paid")
    era: Era = "legacy" if served == "basil" else "basil"
    fake.add_lines(whole["id"], [in_era(line, served, prices) for line in whole["lines"]["data"]])

    def paid(obj: dict[str, Any]) -> Record:
        return stripe_record(event("invoice.paid", obj, created=T0 + MONTH + 600, era=era))

    query = f"SELECT meter, status, delta FROM meter_reconciliation WHERE customer = '{customer}'"
    await project(conn, "lines_whole", Hydrator(pool, None), [scenario.records(), [paid(whole)]])
    expected = sorted(await fetch(conn, "lines_whole", query))
    assert {status for _, status, _ in expected} - {"incomplete"}, expected
    async with make_client(fake) as client:
        cut = first_page(whole, [])
        await project(
            conn, "lines_other_era", Hydrator(pool, client), [scenario.records(), [paid(cut)]]
        )
    assert sorted(await fetch(conn, "lines_other_era", query)) == expected
    assert len(fake.requests_to("/v1/invoices/")) == 1
