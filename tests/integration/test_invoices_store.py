"""The invoices store in real PostgreSQL: guards, lines, the dunning view."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from projectors.invoices import projection as invoices
from projectors.invoices import store
from projectors.migrate import apply_views, migrate
from tests.fixtures import stripe_objects as so
from tests.fixtures.records import as_record
from tests.fixtures.tables import apply_events, one, rows
from tests.support.readme import readme_query

pytestmark = pytest.mark.integration
ERAS: tuple[so.Era, ...] = ("legacy", "basil")


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    # The invoices projection alone: it must not need the subscriptions one.
    connection = await asyncpg.connect(database_url)
    await migrate(connection, [invoices])
    yield connection
    await connection.close()


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


@pytest.mark.parametrize("era", ERAS)
async def test_finalized_and_paid_in_one_second_end_paid_in_any_order(
    conn: asyncpg.Connection, era: so.Era
) -> None:
    inv_id = so.new_id("in")
    finalized = so.event(
        "invoice.finalized", so.invoice(era=era, id=inv_id, status="open"), era=era
    )
    paid = so.event(
        "invoice.paid",
        so.invoice(era=era, id=inv_id, status="paid", subscription="sub_1", paid_at=so.T0),
        era=era,
    )

    await apply_events(conn, [invoices], [paid, finalized, paid], batch_sizes=[1, 1])

    row = await one(conn, "invoices", inv_id)
    assert (row["status"], row["subscription"], row["paid_at"]) == ("paid", "sub_1", at(so.T0))
    assert (row["amount_paid"], row["amount_remaining"]) == (2000, 0)
    assert row["last_event_id"] == paid["id"]


async def test_a_row_written_before_the_progress_part_still_loses_to_a_later_attempt(
    conn: asyncpg.Connection,
) -> None:
    """An upgrade: the row holds a key of the old shape (phase:created:rank:event id),
    which as text beats any new one of its second. The migration rewrites it, so the
    same-second failed attempt still wins."""
    inv_id = so.new_id("in")
    finalized = so.event(
        "invoice.finalized", so.invoice(id=inv_id, status="open", attempt_count=0), id="evt_1zz"
    )
    failed = so.event(
        "invoice.payment_failed",
        so.invoice(id=inv_id, status="open", attempt_count=1),
        id="evt_1aa",
    )
    await apply_events(conn, [invoices], [finalized])
    old_key = f"0:{so.T0:012d}:1:{finalized['id']}"
    await conn.execute(
        "UPDATE projections.invoices SET version = $1 WHERE id = $2", old_key, inv_id
    )
    migration = invoices.sql_dir / "0003_version_progress.sql"
    async with conn.transaction():
        await conn.execute("SET LOCAL search_path TO projections")
        await conn.execute(migration.read_text())

    await apply_events(conn, [invoices], [failed])

    row = await one(conn, "invoices", inv_id)
    assert (row["attempt_count"], row["last_event_id"]) == (1, "evt_1aa")
    # The rewritten key keeps what the row shows: a stale same-second snapshot with fewer
    # attempts (whose event id sorts higher) does not win over it.
    await conn.execute(
        "UPDATE projections.invoices SET version = $1 WHERE id = $2",
        f"0:{so.T0:012d}:1:evt_1aa",
        inv_id,
    )
    async with conn.transaction():
        await conn.execute("SET LOCAL search_path TO projections")
        await conn.execute(migration.read_text())
    stale = so.event(
        "invoice.updated", so.invoice(id=inv_id, status="open", attempt_count=0), id="evt_1zz2"
    )
    await apply_events(conn, [invoices], [stale])
    assert (await one(conn, "invoices", inv_id))["attempt_count"] == 1


async def test_uncollectible_may_still_be_paid(conn: asyncpg.Connection) -> None:
    inv_id = so.new_id("in")
    written_off = so.event(
        "invoice.marked_uncollectible", so.invoice(id=inv_id, status="uncollectible"), created=so.T0
    )
    paid = so.event("invoice.paid", so.invoice(id=inv_id, status="paid"), created=so.T0)

    await apply_events(conn, [invoices], [paid, written_off])

    assert (await one(conn, "invoices", inv_id))["status"] == "paid"


async def test_a_deleted_draft_is_not_brought_back(conn: asyncpg.Connection) -> None:
    draft = so.invoice(status="draft")
    deleted = so.event("invoice.deleted", draft, created=so.T0)
    late = so.event("invoice.updated", draft, created=so.T0 + 30)

    await apply_events(conn, [invoices], [deleted, late], batch_sizes=[1])

    row = await one(conn, "invoices", draft["id"])
    assert (row["deleted"], row["last_event_id"]) == (True, deleted["id"])


@pytest.mark.parametrize("era", ERAS)
async def test_lines_follow_the_winning_snapshot(conn: asyncpg.Connection, era: so.Era) -> None:
    inv_id = so.new_id("in")
    old_line = so.invoice_line(era=era, subscription="sub_1")
    proration = so.invoice_line(
        era=era,
        subscription="sub_1",
        proration=True,
        amount=-700,
        line_price=so.price(unit_amount=900),
    )
    upgrade = so.invoice_line(era=era, subscription="sub_1", line_price=so.price(unit_amount=4900))
    draft = so.event("invoice.created", so.invoice(era=era, id=inv_id, lines=[old_line]), era=era)
    updated = so.event(
        "invoice.updated",
        so.invoice(era=era, id=inv_id, lines=[proration, upgrade], has_more=True),
        created=so.T0 + 1,
        era=era,
    )

    await apply_events(conn, [invoices], [updated, draft], batch_sizes=[1])

    lines = await rows(conn, "invoice_lines", where=f"invoice = '{inv_id}'")
    assert {(ln["id"], ln["amount"], ln["proration"]) for ln in lines} == {
        (proration["id"], -700, True),
        (upgrade["id"], 4900, False),
    }
    assert {ln["last_event_id"] for ln in lines} == {updated["id"]}
    row = await one(conn, "invoices", inv_id)
    assert (row["lines_complete"], row["total"]) == (False, 4200)


@pytest.mark.parametrize("subscription_first", [True, False])
async def test_a_basil_line_gets_its_meter_from_the_price_shown_elsewhere(
    conn: asyncpg.Connection, subscription_first: bool
) -> None:
    """A basil line names its price by id only; the subscription's items show the price
    whole, meter included. Whichever arrives first (in one batch or in two), the metered
    line ends with its meter, the licensed one with none."""
    metered = so.price(unit_amount=None, meter="mtr_usage")
    licensed = so.price()
    sub = so.subscription(
        items=[so.subscription_item(item_price=p) for p in (metered, licensed)],
    )
    inv_id = so.new_id("in")
    usage, seat = (
        so.invoice_line(subscription=sub["id"], line_price=p) for p in (metered, licensed)
    )
    events = [
        so.event("customer.subscription.created", sub),
        so.event("invoice.finalized", so.invoice(id=inv_id, status="open", lines=[usage, seat])),
    ]
    if not subscription_first:
        events.reverse()
    for name, sizes in (("one_batch", []), ("two_batches", [1])):
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        await migrate(conn, [invoices], schema=name, record=False)
        await apply_events(conn, [invoices], events, schema=name, batch_sizes=sizes)
        lines = await rows(conn, "invoice_lines", schema=name, where=f"invoice = '{inv_id}'")
        assert {ln["id"]: ln["meter"] for ln in lines} == {
            usage["id"]: "mtr_usage",
            seat["id"]: None,
        }


async def test_a_new_links_lines_are_found_without_reading_every_line(
    conn: asyncpg.Connection,
) -> None:
    """FILL_METERS runs for each price linked for the first time (with a price per
    customer, each new subscription): it must reach that price's lines without a meter
    through an index, never by reading the whole of invoice_lines."""
    async with conn.transaction():
        await conn.execute("SET LOCAL search_path TO projections")
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {store.FILL_METERS}", ["price_new"])
    scans = []

    def walk(node: dict[str, Any]) -> None:
        scans.append((node["Node Type"], node.get("Relation Name"), node.get("Index Name")))
        for child in node.get("Plans", []):
            walk(child)

    walk(json.loads(plan)[0]["Plan"])
    lines = [scan for scan in scans if scan[1] == "invoice_lines"]
    assert lines, scans
    assert all(kind != "Seq Scan" for kind, _, _ in lines), scans


@pytest.mark.parametrize("link_first", [True, False])
async def test_a_link_and_its_lines_written_at_once_by_two_processes_meet(
    database_url: str, link_first: bool
) -> None:
    """Two processes (two partitions: the subscription's key, the invoice's) write a
    price's first link and a basil line of that price at the same moment, neither seeing
    the other's uncommitted rows. The second waits for the first to commit (a lock per
    price not linked yet), so the line ends with its meter whichever began first."""
    schema = f"price_race_{int(link_first)}"
    metered = so.price(unit_amount=None, meter="mtr_race")
    sub = so.subscription(items=[so.subscription_item(item_price=metered)])
    inv_id = so.new_id("in")
    usage = so.invoice_line(subscription=sub["id"], line_price=metered)
    link = so.event("customer.subscription.created", sub)
    bill = so.event("invoice.finalized", so.invoice(id=inv_id, status="open", lines=[usage]))
    first, second = (link, bill) if link_first else (bill, link)
    one_conn = await asyncpg.connect(database_url)
    other_conn = await asyncpg.connect(database_url)
    try:
        await one_conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await migrate(one_conn, [invoices], schema=schema, record=False)

        async def apply(conn: asyncpg.Connection, event: dict[str, Any]) -> None:
            await conn.execute(f'SET LOCAL search_path TO "{schema}", public')
            await invoices.apply(conn, list(invoices.reduce(as_record(event))))

        held = one_conn.transaction()
        await held.start()
        await apply(one_conn, first)  # not committed yet

        async def meanwhile() -> None:
            async with other_conn.transaction():
                await apply(other_conn, second)

        waiting = asyncio.ensure_future(meanwhile())
        await asyncio.sleep(0.5)  # the wait under test, not a poll
        assert not waiting.done(), "the second went ahead without the first's rows"
        await held.commit()
        await asyncio.wait_for(waiting, 10)
        found = await one_conn.fetchval(
            f'SELECT meter FROM "{schema}".invoice_lines WHERE id = $1', usage["id"]
        )
        assert found == "mtr_race"
    finally:
        await one_conn.close()
        await other_conn.close()


async def test_upcoming_invoices_and_other_events_write_nothing(conn: asyncpg.Connection) -> None:
    preview = so.invoice(subscription="sub_1")
    del preview["id"]

    await apply_events(
        conn,
        [invoices],
        [
            so.event("invoice.upcoming", preview),
            so.event("customer.subscription.updated", so.subscription()),
        ],
    )

    assert await rows(conn, "invoices") == []
    assert await rows(conn, "invoice_lines") == []


async def test_invoice_payments_are_kept(conn: asyncpg.Connection) -> None:
    payment = so.invoice_payment(invoice="in_P", amount=4900, paid_at=so.T0 + 9)

    await apply_events(conn, [invoices], [so.event("invoice_payment.paid", payment)] * 2)

    row = await one(conn, "invoice_payments", payment["id"])
    assert (row["invoice"], row["status"], row["amount_paid"]) == ("in_P", "paid", 4900)
    assert row["paid_at"] == at(so.T0 + 9)


async def test_dunning_lists_open_invoices_with_failed_attempts_oldest_first(
    conn: asyncpg.Connection,
) -> None:
    def failed(created: int, attempts: int, status: str = "open") -> dict[str, Any]:
        inv = so.invoice(
            status=status,
            attempt_count=attempts,
            created=created,
            next_payment_attempt=created + 86_400 if status == "open" else None,
        )
        return so.event("invoice.payment_failed", inv, created=created)

    newer, older = failed(so.T0, 1), failed(so.T0 - 86_400, 3)
    await apply_events(
        conn,
        [invoices],
        [
            newer,
            older,
            # Open, never attempted.
            so.event("invoice.finalized", so.invoice(status="open", attempt_count=0)),
            failed(so.T0, 2, status="paid"),
            failed(so.T0, 2, status="void"),
        ],
    )

    listed = await conn.fetch("SELECT * FROM projections.dunning")
    assert [r["invoice"] for r in listed] == [
        older["data"]["object"]["id"],
        newer["data"]["object"]["id"],
    ]
    assert [r["attempt_count"] for r in listed] == [3, 1]
    assert listed[0]["next_payment_attempt"] == at(so.T0)


@pytest.mark.parametrize("batch_sizes", [[1, 1, 1], []], ids=["apart", "one-batch"])
async def test_dunning_counts_failures_not_attempts_under_way(
    conn: asyncpg.Connection, batch_sizes: list[int]
) -> None:
    """A bank debit processing is `open` with `attempt_count` 1 and nothing failed: not in
    dunning. A failure stays counted when a newer snapshot (a retry under way) came first,
    and a second attempt means the first failed even when its failure event is missing."""

    def snapshot(kind: str, inv_id: str, attempts: int, created: int) -> dict[str, Any]:
        inv = so.invoice(id=inv_id, status="open", attempt_count=attempts, attempted=attempts > 0)
        return so.event(kind, inv, created=created)

    processing, failed, second = so.new_id("in"), so.new_id("in"), so.new_id("in")
    confirmed = so.new_id("in")
    events = [
        # A first payment the customer confirms shows no attempt, and it failed.
        snapshot("invoice.payment_failed", confirmed, 0, so.T0 + 5),
        # The debit under way: finalized, then attempted (no failure yet).
        snapshot("invoice.updated", processing, 1, so.T0 + 10),
        # The retry under way (newer) arrives before the failure that caused it.
        snapshot("invoice.updated", failed, 1, so.T0 + 900),
        snapshot("invoice.payment_failed", failed, 1, so.T0 + 10),
    ]
    await apply_events(
        conn,
        [invoices],
        [*events, snapshot("invoice.updated", second, 2, so.T0 + 20)],
        batch_sizes=batch_sizes,
    )

    listed = {r["invoice"]: r for r in await conn.fetch("SELECT * FROM projections.dunning")}
    assert sorted(listed) == sorted([failed, second, confirmed])
    assert listed[confirmed]["failed_attempts"] == 1
    assert listed[failed]["failed_attempts"] == 1
    assert listed[failed]["last_event_created"] == at(so.T0 + 900)
    assert listed[second]["failed_attempts"] == 0
    assert (await one(conn, "invoices", processing))["failed_attempts"] == 0


async def test_the_readme_dunning_query_counts_open_time_from_finalization(
    conn: asyncpg.Connection,
) -> None:
    """A draft is not due: an invoice drafted ten days ago and finalized two days ago has
    been open two days."""
    query = readme_query(
        "    SELECT invoice, customer, amount_remaining", "ORDER BY created, invoice;"
    )
    now = int(datetime.now(UTC).timestamp())
    drafted, finalized = now - 10 * 86_400, now - 2 * 86_400
    inv = so.invoice(
        status="open",
        attempt_count=1,
        created=drafted,
        next_payment_attempt=now + 86_400,
        livemode=True,
        status_transitions={"finalized_at": finalized, "paid_at": None, "voided_at": None},
    )
    await apply_events(conn, [invoices], [so.event("invoice.payment_failed", inv, created=now)])

    [row] = await conn.fetch(query)
    assert row["invoice"] == inv["id"]
    assert abs(row["open_for"] - (datetime.now(UTC) - at(finalized))).total_seconds() < 600


async def test_the_readme_overdue_query_lists_invoices_sent_for_payment_past_due(
    conn: asyncpg.Connection,
) -> None:
    query = readme_query(
        "    SELECT id AS invoice, customer, amount_remaining, currency, due_date,",
        "ORDER BY due_date, invoice;",
    )
    now = int(datetime.now(UTC).timestamp())

    def sent(due: int, **overrides: Any) -> dict[str, Any]:
        fields: dict[str, Any] = {"collection_method": "send_invoice", "livemode": True}
        inv = so.invoice(status="open", due_date=due, **{**fields, **overrides})
        return so.event("invoice.overdue", inv, created=now)

    late, later = sent(now - 86_400), sent(now - 3 * 86_400)
    events = [
        late,
        later,
        sent(now + 86_400),  # not due yet
        sent(now - 86_400, collection_method="charge_automatically"),  # dunning's
        sent(now - 86_400, livemode=False),
    ]
    await apply_events(conn, [invoices], events)

    listed = await conn.fetch(query)
    assert [r["invoice"] for r in listed] == [
        later["data"]["object"]["id"],
        late["data"]["object"]["id"],
    ]
    assert listed[0]["overdue_for"] > timedelta(days=2)


async def test_rows_kept_before_failed_attempts_keep_their_place_in_dunning(
    conn: asyncpg.Connection,
) -> None:
    """An upgrade: a row written before `failed_attempts` existed counts its attempts as
    failures, as `dunning` did then, until a replay; one never attempted counts none."""
    attempted, untried = so.new_id("in"), so.new_id("in")
    await apply_events(
        conn,
        [invoices],
        [
            so.event("invoice.updated", so.invoice(id=attempted, status="open", attempt_count=1)),
            so.event("invoice.finalized", so.invoice(id=untried, status="open", attempt_count=0)),
        ],
    )
    async with conn.transaction():
        await conn.execute("SET LOCAL search_path TO projections")
        await conn.execute("DROP VIEW dunning; ALTER TABLE invoices DROP COLUMN failed_attempts")
        await conn.execute((invoices.sql_dir / "0006_failed_attempts.sql").read_text())
        await apply_views(conn, invoices)

    assert (await one(conn, "invoices", attempted))["failed_attempts"] == 1
    assert (await one(conn, "invoices", untried))["failed_attempts"] == 0
    listed = await conn.fetch("SELECT invoice FROM projections.dunning")
    assert [r["invoice"] for r in listed] == [attempted]


async def test_known_links_and_prices_shown_whole_hold_up_no_other_process(
    database_url: str,
) -> None:
    """A subscription event naming a price already linked locks nothing another process
    writing the same link must wait for; a line that showed its price whole takes no
    lock; a batch naming a thousand prices by id takes at most 256 shared locks."""
    schema = "price_locks"
    metered = so.price(unit_amount=None, meter="mtr_known")
    sub = so.subscription(items=[so.subscription_item(item_price=metered)])
    link = so.event("customer.subscription.updated", sub)
    legacy = so.event(
        "invoice.finalized",
        so.invoice(era="legacy", status="open", lines=[so.invoice_line(era="legacy")]),
        era="legacy",
    )
    many = so.event(
        "invoice.finalized",
        so.invoice(status="open", lines=[so.invoice_line() for _ in range(1000)]),
    )
    one_conn = await asyncpg.connect(database_url)
    other_conn = await asyncpg.connect(database_url)

    async def apply(conn: asyncpg.Connection, event: dict[str, Any]) -> None:
        await conn.execute(f'SET LOCAL search_path TO "{schema}", public')
        await invoices.apply(conn, list(invoices.reduce(as_record(event))))

    async def advisory_locks(conn: asyncpg.Connection) -> int:
        found: int = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1",
            conn.get_server_pid(),
        )
        return found

    try:
        await one_conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await migrate(one_conn, [invoices], schema=schema, record=False)
        async with one_conn.transaction():
            await apply(one_conn, link)  # linked now, for good
        async with one_conn.transaction():
            await apply(one_conn, link)  # again, still open
            async with other_conn.transaction():
                await asyncio.wait_for(apply(other_conn, link), 5)
            await apply(one_conn, legacy)
            assert await advisory_locks(one_conn) == 0
        async with one_conn.transaction():
            await apply(one_conn, many)
            assert 0 < await advisory_locks(one_conn) <= 256
    finally:
        await one_conn.close()
        await other_conn.close()
