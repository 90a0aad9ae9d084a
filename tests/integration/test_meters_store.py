"""The meters store against a real PostgreSQL: the reconciliation of a billing month, and
the same table from any shuffle or duplication of its records."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
import pytest

from deploy.settings import Settings
from projectors import status as status_command
from projectors.base import Record
from projectors.meters import projection
from projectors.meters import store as meters_store
from projectors.meters.changes import Change, PriceMeter
from projectors.meters.recompute import Touched
from projectors.migrate import migrate
from tests.fixtures.stripe_objects import (
    MONTH,
    T0,
    credit_note,
    credit_note_line,
    event,
    invoice,
    invoice_line,
    price,
    subscription,
    subscription_item,
)
from tests.support.meter_payloads import (
    billing_meter,
    error_report,
    meter_event,
    stripe_record,
    usage_fact,
    usage_record,
)
from tests.support.meter_scenario import DAY, Scenario, billing_month, expected_decimal
from tests.support.readme import readme_section
from tests.support.wait import eventually

pytestmark = pytest.mark.integration

ROWS = """
SELECT customer, meter, period_start, event_name, period_end, aggregation, reported_value,
       rejected_value, billed_quantity, delta, status, reported_facts, rejected_facts,
       unattributed_rejections, invoices, last_event_id, last_event_created
FROM meter_reconciliation ORDER BY customer, meter, period_start
"""


async def project(
    conn: asyncpg.Connection,
    schema: str,
    batches: Sequence[Sequence[Record]],
    *,
    fresh: bool = True,
) -> None:
    """Migrate `schema` when `fresh`, then apply each batch in its own transaction, as the
    runner does."""
    if fresh:
        await migrate(conn, [projection], schema=schema, record=False)
    for batch in batches:
        changes: list[Change] = [c for r in batch for c in projection.reduce(r)]
        async with conn.transaction():
            await conn.execute(f"SET LOCAL search_path TO {schema}, public")
            await projection.apply(conn, changes)


async def fetch(conn: asyncpg.Connection, schema: str, query: str = ROWS) -> list[tuple[Any, ...]]:
    """Rows of `query` in `schema`."""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL search_path TO {schema}, public")
        return [tuple(r) for r in await conn.fetch(query)]


async def rows_in_each_order(
    conn: asyncpg.Connection,
    orders: Sequence[tuple[str, Sequence[Sequence[Record]]]],
    query: str,
) -> dict[str, list[tuple[Any, ...]]]:
    """`query`'s rows once each order of batches is projected, from a fresh schema named
    after it: a table that any order must give alike is compared across them all."""
    rows = {}
    for schema, batches in orders:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await project(conn, schema, batches)
        rows[schema] = await fetch(conn, schema, query)
    return rows


@pytest.fixture
async def conn(database_url: str) -> Any:
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


async def test_a_billing_month_reconciles_every_case(conn: asyncpg.Connection) -> None:
    scenario = billing_month()
    await project(conn, "projections", [scenario.records()])
    rows = await fetch(
        conn,
        "projections",
        "SELECT customer, meter, reported_value, rejected_value, billed_quantity, delta, status "
        "FROM meter_reconciliation",
    )
    got = {(r[0], r[1]): tuple(r[2:]) for r in rows}
    assert got == {k: expected_decimal(v) for k, v in scenario.expected.items()}


async def test_counts_beyond_samples_and_held_facts_are_visible(conn: asyncpg.Connection) -> None:
    scenario = billing_month()
    await project(conn, "projections", [scenario.records()])
    sum_meter = scenario.meters["sum"]
    unattributed = await fetch(
        conn,
        "projections",
        f"SELECT DISTINCT unattributed_rejections FROM meter_reconciliation "
        f"WHERE meter = '{sum_meter}'",
    )
    assert unattributed == [(2,)]
    held = await fetch(
        conn, "projections", "SELECT identifier, customer, reason FROM unplaced_usage"
    )
    assert held == [("ghost", "cus_ghost", "no_meter")]  # no meter has its event name
    rejected = await fetch(
        conn, "projections", "SELECT identifier, code FROM meter_rejections ORDER BY identifier"
    )
    assert rejected == [("b-rejected", "invalid_value"), ("ghost", "no_meter")]
    discrepancies = await fetch(
        conn, "projections", "SELECT customer, status, delta FROM usage_discrepancies"
    )
    assert discrepancies == [("cus_legacy", "under_billed", Decimal("1.5"))]


async def test_rows_carry_their_newest_event(conn: asyncpg.Connection) -> None:
    scenario = billing_month()
    await project(conn, "projections", [scenario.records()])
    rows = await fetch(
        conn,
        "projections",
        "SELECT customer, last_event_id, extract(epoch FROM last_event_created)::bigint "
        "FROM meter_reconciliation WHERE customer = 'cus_legacy'",
    )
    invoice_event = next(
        e
        for e in scenario.stripe_events
        if e["type"] == "invoice.finalized" and e["data"]["object"]["customer"] == "cus_legacy"
    )
    assert rows == [("cus_legacy", invoice_event["id"], invoice_event["created"])]


async def test_any_shuffle_and_duplication_gives_the_same_table(conn: asyncpg.Connection) -> None:
    records = billing_month().records()
    await project(conn, "ordered", [records])
    expected = await fetch(conn, "ordered")
    assert len(expected) == 4
    for seed in range(10):
        rng = random.Random(seed)
        stream = records + rng.sample(records, k=len(records) // 3)
        rng.shuffle(stream)
        cuts = sorted(rng.sample(range(1, len(stream)), k=5))
        batches = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        schema = f"shuffled{seed}"
        await project(conn, schema, batches)
        assert await fetch(conn, schema) == expected, f"seed {seed}"


@pytest.mark.parametrize("facts_first", [True, False], ids=["facts-held", "row-exists"])
async def test_two_processes_writing_one_customers_rows_at_once_lose_nothing(
    conn: asyncpg.Connection, database_url: str, facts_first: bool
) -> None:
    """One customer's usage facts (on `usage.reported`) and billing (on `stripe.events`)
    are applied by two processes at once: process A's batch of facts is written but not
    yet committed when process B's batch of Stripe events recomputes the same rows. B must
    not write rows that leave out A's facts."""
    scenario = billing_month()
    records = scenario.records()
    # A minute later, each subscription again (as `customer.subscription.updated` would
    # bring it): B's batch then changes the periods, and its rows are recomputed.
    later = [
        stripe_record(dict(e, id=f"{e['id']}_later", created=e["created"] + 60), offset=n)
        for n, e in enumerate(scenario.stripe_events)
        if e["type"].startswith("customer.subscription.")
    ]
    assert later
    await project(conn, "ordered", [records, later])
    expected = await fetch(conn, "ordered")
    facts = [r for r in records if r.topic == "usage.reported"]
    stripe = [r for r in records if r.topic != "usage.reported"]
    await migrate(conn, [projection], schema="raced", record=False)
    if facts_first:
        stripe += later
    else:
        # The rows exist: A's facts take the incremental path, B recomputes them anew.
        await project(conn, "raced", [stripe], fresh=False)
        stripe = later
    other = await asyncpg.connect(database_url)
    try:
        held = conn.transaction()
        await held.start()
        await conn.execute("SET LOCAL search_path TO raced, public")
        await projection.apply(conn, [c for r in facts for c in projection.reduce(r)])
        # B, as another process would, while A's transaction is still open.
        b = asyncio.create_task(project(other, "raced", [stripe], fresh=False))

        async def b_done_or_waiting_for_a() -> bool:
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            return b.done() or waiting > 0

        # B has read what it reads (and written, or waits on A's locks) before A commits.
        await eventually(b_done_or_waiting_for_a, what="B done or waiting for A")
        await held.commit()
        await asyncio.wait_for(b, timeout=30)
    finally:
        await other.close()
    assert await fetch(conn, "raced") == expected


def finalized_invoice(scenario: Scenario, customer: str) -> dict[str, Any]:
    """The invoice the scenario finalized for `customer`, as its `invoice.finalized` has it."""
    invoice: dict[str, Any] = next(
        e["data"]["object"]
        for e in scenario.stripe_events
        if e["type"] == "invoice.finalized" and e["data"]["object"]["customer"] == customer
    )
    return invoice


async def test_an_invoice_with_lines_not_in_its_body_makes_its_period_incomplete(
    conn: asyncpg.Connection,
) -> None:
    """The legacy customer's invoice is delivered again with `lines.has_more` and only a
    licensed line on the first page (the metered one is on page two): its period cannot
    be judged, so it says `incomplete`, never `under_billed` for the whole usage."""
    scenario = billing_month()
    legacy = finalized_invoice(scenario, "cus_legacy")
    licensed = invoice_line(era="legacy", quantity=3)
    page_one = dict(legacy, status="paid", lines=dict(legacy["lines"], data=[licensed]))
    page_one["lines"]["has_more"] = True
    paid = stripe_record(event("invoice.paid", page_one, created=T0 + MONTH + 600, era="legacy"))
    await project(conn, "projections", [scenario.records(), [paid]])
    statuses = dict(
        await fetch(
            conn,
            "projections",
            "SELECT customer, status FROM meter_reconciliation WHERE meter = "
            f"'{scenario.meters['sum']}'",
        )
    )
    assert statuses == {"cus_legacy": "incomplete", "cus_basil": "matched"}
    # A fact counted on the fast path keeps the row incomplete.
    late = usage_record(usage_fact("l-later", "cus_legacy", "1", timestamp=T0 + 12 * 86_400))
    await project(conn, "projections", [[late]], fresh=False)
    (row,) = await fetch(
        conn,
        "projections",
        "SELECT reported_value, status FROM meter_reconciliation "
        f"WHERE customer = 'cus_legacy' AND meter = '{scenario.meters['sum']}'",
    )
    assert row == (Decimal("4.5"), "incomplete")
    # All its lines again (has_more false): the period is judged once more.
    whole = dict(legacy, status="paid")
    again = stripe_record(event("invoice.paid", whole, created=T0 + MONTH + 900, era="legacy"))
    await project(conn, "projections", [[again]], fresh=False)
    (row,) = await fetch(
        conn,
        "projections",
        "SELECT billed_quantity, status FROM meter_reconciliation "
        f"WHERE customer = 'cus_legacy' AND meter = '{scenario.meters['sum']}'",
    )
    assert row == (Decimal("2"), "under_billed")


async def test_facts_before_their_period_are_held_then_placed(conn: asyncpg.Connection) -> None:
    scenario = billing_month()
    records = scenario.records()
    facts = [r for r in records if r.topic == "usage.reported"]
    stripe = [r for r in records if r.topic != "usage.reported"]
    await project(conn, "projections", [facts])
    assert await fetch(conn, "projections") == []
    cancelled = {f["identifier"] for f in scenario.facts if f.get("action") == "cancel"}
    live = {f["identifier"] for f in scenario.facts} - cancelled
    held = await fetch(conn, "projections", "SELECT count(*) FROM unplaced_usage")
    assert held == [(len(live),)]
    await project(conn, "projections", [stripe], fresh=False)
    assert len(await fetch(conn, "projections")) == 4


async def test_decimal_tenths_sum_exactly(conn: asyncpg.Connection) -> None:
    scenario = billing_month()
    tenths = [
        usage_record(usage_fact(f"tenth-{n}", "cus_legacy", 0.1, timestamp=T0 + 20 * 86_400 + n))
        for n in range(10)
    ]
    await project(conn, "projections", [scenario.records(), tenths])
    rows = await fetch(
        conn,
        "projections",
        "SELECT reported_value, delta FROM meter_reconciliation "
        f"WHERE customer = 'cus_legacy' AND meter = '{scenario.meters['sum']}'",
    )
    # 2 + 1.5 + ten times 0.1, where floats would give 4.499999999999999.
    assert sum([0.1] * 10) != 1.0
    assert rows == [(Decimal("4.5"), Decimal("2.5"))]


async def test_facts_counted_one_by_one_match_a_full_recompute(conn: asyncpg.Connection) -> None:
    # Stripe's side first, so every fact after it is counted by the incremental path,
    # including one already rejected and those of the `last` and `count` meters.
    records = billing_month().records()
    await project(conn, "ordered", [records])
    stripe = [r for r in records if r.topic != "usage.reported"]
    facts = [r for r in records if r.topic == "usage.reported"]
    await project(conn, "incremental", [stripe, *([f] for f in facts)])
    assert await fetch(conn, "incremental") == await fetch(conn, "ordered")


def readme_query() -> str:
    """The copy-paste query of the README's `meters` section."""
    return readme_section("meters").split("```sql\n")[1].split("```")[0]


async def test_a_period_whose_metered_line_was_on_the_first_page_is_judged(
    conn: asyncpg.Connection,
) -> None:
    """`lines.has_more` with the metered line of the period on the page the webhook
    carried: the period's billing is known, so it is judged, not left `incomplete`."""
    scenario = billing_month()
    legacy = finalized_invoice(scenario, "cus_legacy")
    page_one = dict(legacy, status="paid", lines=dict(legacy["lines"], has_more=True))
    paid = stripe_record(event("invoice.paid", page_one, created=T0 + MONTH + 600, era="legacy"))
    await project(conn, "projections", [scenario.records(), [paid]])

    # The month's late fact (reported after the invoice was final) is under-billed.
    assert await fetch(conn, "projections", STATUS) == [
        ("cus_legacy", "under_billed", Decimal("1.5"))
    ]


async def test_a_voided_invoice_leaves_its_usage_under_billed_not_pending(
    conn: asyncpg.Connection,
) -> None:
    """Stripe voids the legacy customer's usage invoice and bills nothing else: the period
    is closed with nothing billed, so all its accepted usage shows as under-billed (and
    stays so when a fact arrives later), instead of `pending` for ever."""
    scenario = billing_month()
    legacy = finalized_invoice(scenario, "cus_legacy")
    voided = stripe_record(
        event("invoice.voided", dict(legacy, status="void"), created=T0 + MONTH + 600, era="legacy")
    )
    await project(conn, "projections", [scenario.records(), [voided]])
    late = usage_record(usage_fact("l-later", "cus_legacy", "1", timestamp=T0 + 12 * 86_400))
    await project(conn, "projections", [[late]], fresh=False)

    ((reported, rejected, billed, delta, status, invoices),) = await fetch(
        conn,
        "projections",
        "SELECT reported_value, rejected_value, billed_quantity, delta, status, invoices "
        "FROM meter_reconciliation WHERE customer = 'cus_legacy'",
    )
    assert (billed, status, invoices) == (0, "under_billed", 1)
    assert delta == reported - rejected > 0


async def test_an_invoice_reissued_for_a_voided_one_with_lines_not_seen_is_incomplete(
    conn: asyncpg.Connection,
) -> None:
    """Voided, then billed again on a new invoice whose metered line is on a page the
    webhook did not carry: the voided line must not make the period look judged."""
    scenario = billing_month()
    legacy = finalized_invoice(scenario, "cus_legacy")
    voided = event(
        "invoice.voided", dict(legacy, status="void"), created=T0 + MONTH + 600, era="legacy"
    )
    reissued = dict(
        legacy,
        id=f"{legacy['id']}_again",
        lines=dict(legacy["lines"], data=[invoice_line(era="legacy", quantity=3)], has_more=True),
    )
    await project(
        conn,
        "projections",
        [
            scenario.records(),
            [stripe_record(voided)],
            [stripe_record(event("invoice.finalized", reissued, created=T0 + MONTH + 900))],
        ],
    )

    ((status,),) = await fetch(
        conn, "projections", "SELECT status FROM meter_reconciliation WHERE customer = 'cus_legacy'"
    )
    assert status == "incomplete"


async def test_the_readme_query_finds_last_months_under_billed_customers(
    conn: asyncpg.Connection,
) -> None:
    """The periods that ended last month: the calendar month, ending at midnight on this
    month's 1st (billed short, cus_legacy), and one cut short by a cancellation last month
    (never invoiced, cus_cut). A period that began last month and ended this month
    (cus_next, cut short this month and never invoiced) is this month's, not listed."""
    today = datetime.now(UTC)
    this_month = datetime(today.year, today.month, 1, tzinfo=UTC)
    last_month = (this_month - timedelta(days=1)).replace(day=1)
    lo, hi = int(last_month.timestamp()), int(this_month.timestamp())
    scenario = billing_month(start=lo, end=hi)
    sum_meter = next(
        e["data"]["object"]
        for e in scenario.stripe_events
        if e["data"]["object"]["id"] == scenario.meters["sum"]
    )
    cut = metered_subscription("cus_cut", sum_meter, (lo, hi), "4", ended=lo + 10 * DAY)
    next_ = metered_subscription(
        "cus_next", sum_meter, (hi - 10 * DAY, hi + 20 * DAY), "9", ended=hi + DAY
    )
    # Its fact, the newest of all, is the log's clock: cus_next's period ended 5 days before.
    late = metered_subscription("cus_late", sum_meter, (hi + 5 * DAY, hi + 35 * DAY), "1")
    await project(conn, "projections", [[*scenario.records(), *cut, *next_, *late]])
    rows = await conn.fetch(readme_query())
    assert [(r["customer"], r["status"], r["delta"], r["period_end"]) for r in rows] == [
        ("cus_cut", "unbilled", Decimal(4), datetime.fromtimestamp(lo + 10 * DAY, UTC)),
        ("cus_legacy", "under_billed", Decimal("1.5"), this_month),
    ]


STATUS = "SELECT customer, status, delta FROM meter_reconciliation WHERE customer = 'cus_legacy'"


async def test_usage_reported_after_the_invoice_was_final_turns_a_match_under_billed(
    conn: asyncpg.Connection,
) -> None:
    scenario = billing_month()
    records = scenario.records()
    late = [r for r in records if r.topic == "usage.reported" and b"l-late" in r.value]
    await project(conn, "projections", [[r for r in records if r not in late]])
    assert await fetch(conn, "projections", STATUS) == [("cus_legacy", "matched", Decimal(0))]
    await project(conn, "projections", [late], fresh=False)
    assert await fetch(conn, "projections", STATUS) == [
        ("cus_legacy", "under_billed", Decimal("1.5"))
    ]


async def test_rejections_follow_the_meter_formula(conn: asyncpg.Connection) -> None:
    # A rejected login takes one off a count; a rejected last value falls back to the one
    # before it (8 rejected: Stripe's last is 5), so what was billed is now too much.
    scenario = billing_month()
    report = error_report(identifiers=["b-login-0", "b-seats-b"], meter=None, code="invalid_value")
    await project(conn, "projections", [[*scenario.records(), stripe_record(report)]])
    rows = await fetch(
        conn,
        "projections",
        "SELECT aggregation, reported_value, rejected_value, billed_quantity, delta, status "
        "FROM meter_reconciliation WHERE customer = 'cus_basil' AND aggregation <> 'sum' "
        "ORDER BY aggregation",
    )
    assert rows == [
        ("count", Decimal(3), Decimal(1), Decimal(3), Decimal(-1), "over_billed"),
        ("last", Decimal(8), Decimal(3), Decimal(8), Decimal(-3), "over_billed"),
    ]


async def test_a_period_cut_short_by_a_cancellation_stays_short_in_any_order(
    conn: asyncpg.Connection,
) -> None:
    """A subscription deleted mid-period, and an update of it in the same second whose
    event id sorts after: the period ends at the cancellation whichever came first (a
    replacement subscription's usage would otherwise count in both periods)."""
    metered = price(meter="mtr_1", unit_amount=None)
    ended = T0 + 9 * 86_400

    def snapshot(event_type: str, event_id: str, **fields: Any) -> Record:
        sub = subscription(
            customer="cus_cut", items=[subscription_item(item_price=metered)], **fields
        )
        return stripe_record(event(event_type, sub, created=ended, id=event_id))

    update = snapshot("customer.subscription.updated", "evt_zz_update")
    deleted = snapshot(
        "customer.subscription.deleted",
        "evt_aa_deleted",
        status="canceled",
        canceled_at=ended,
        ended_at=ended,
    )
    ends = "SELECT extract(epoch FROM period_end)::bigint FROM meter_periods"
    got = await rows_in_each_order(
        conn,
        (
            ("cut_one_batch", [[update, deleted]]),
            ("cut_update_first", [[update], [deleted]]),
            ("cut_deleted_first", [[deleted], [update]]),
        ),
        ends,
    )
    assert got == {schema: [(ended,)] for schema in got}

    # A period can also grow within a second (a trial extended just after it began): only
    # an ended subscription's period is final, a shorter one is not.
    longer = ended + 7 * 86_400

    def trialing(event_id: str, trial_end: int) -> Record:
        item = subscription_item(item_price=metered, period_start=T0, period_end=trial_end)
        sub = subscription(customer="cus_trial", status="trialing", items=[item])
        return stripe_record(
            event("customer.subscription.updated", sub, created=T0 + 1, id=event_id)
        )

    extended = [trialing("evt_aa_first", ended), trialing("evt_bb_extended", longer)]
    got = await rows_in_each_order(
        conn,
        (
            ("grown_one_batch", [extended]),
            ("grown_extended_first", [[extended[1]], [extended[0]]]),
        ),
        ends,
    )
    assert got == {schema: [(longer,)] for schema in got}


@pytest.mark.parametrize("final_invoice", [False, True])
async def test_a_cancellation_cuts_the_period_of_a_price_swapped_out_earlier(
    conn: asyncpg.Connection, final_invoice: bool
) -> None:
    """The item's price changed to another of the same meter on day 9 (the period goes on:
    classic billing keeps it), then the subscription was canceled on day 19. Stripe bills
    nothing after the cancellation, whichever price the usage came under: the period of
    the price swapped out (kept by no later snapshot, so never cut by one) must not carry
    the row past it, and the usage reported after it is not counted. The final invoice,
    an hour later, bills the current price's line up to the cancellation: a newer snapshot
    of that period, which must not undo its end (the cancellation stays, in any order)."""
    meter = billing_meter(event_name="swapped_calls")
    first = price(meter=meter["id"], unit_amount=None, id="price_swapped_out")
    second = price(meter=meter["id"], unit_amount=None, id="price_swapped_in")
    ended = T0 + 19 * DAY

    def snapshot(event_type: str, item_price: dict[str, Any], at: int, **fields: Any) -> Record:
        item = subscription_item(item_price=item_price, id="si_swapped")
        sub = subscription(customer="cus_swapped", items=[item], id="sub_swapped", **fields)
        return stripe_record(event(event_type, sub, created=at))

    facts = [
        usage_record(
            usage_fact(
                f"u-{day}", "cus_swapped", "5", event_name="swapped_calls", timestamp=T0 + day * DAY
            )
        )
        for day in (2, 12, 25)  # under the first price, the second, and after the end
    ]
    records = [
        stripe_record(meter_event(meter)),
        snapshot("customer.subscription.created", first, T0),
        snapshot("customer.subscription.updated", second, T0 + 9 * DAY),
        snapshot(
            "customer.subscription.deleted",
            second,
            ended,
            status="canceled",
            canceled_at=ended,
            ended_at=ended,
        ),
        *facts,
    ]
    if final_invoice:
        line = invoice_line(
            subscription="sub_swapped", line_price=second, quantity=10, period_start=T0,
            period_end=ended,
        )  # fmt: skip
        last = invoice(customer="cus_swapped", subscription="sub_swapped", lines=[line])
        records.append(stripe_record(event("invoice.finalized", last, created=ended + 3600)))
    query = (
        "SELECT extract(epoch FROM period_end)::bigint, reported_value FROM meter_reconciliation"
    )
    got = await rows_in_each_order(
        conn,
        (
            ("swapped_one_batch", [records]),
            ("swapped_each_alone", [[r] for r in records]),
            ("swapped_reversed", [[r] for r in reversed(records)]),
        ),
        query,
    )
    assert got == {schema: [(ended, Decimal(10))] for schema in got}


async def test_periods_kept_before_subscriptions_were_known_are_not_cut_by_an_ended_one(
    conn: asyncpg.Connection,
) -> None:
    """Periods kept before `meter_periods.subscription` existed have none: they cannot be
    told apart by subscription, so they are not cut (as migration 0008 says). cus_two had
    two subscriptions pricing the meter, one canceled on day 19: the other one's period
    still runs to the month's end, and its usage on day 25 counts when the period is next
    recomputed."""
    meter = billing_meter(event_name="two_sub_calls")
    kept = price(meter=meter["id"], unit_amount=None, id="price_two_kept")
    gone = price(meter=meter["id"], unit_amount=None, id="price_two_gone")
    ended = T0 + 19 * DAY

    def snapshot(
        event_type: str, sub_id: str, item_price: dict[str, Any], at: int, **fields: Any
    ) -> Record:
        item = subscription_item(item_price=item_price, id=f"si_{sub_id}")
        sub = subscription(customer="cus_two", items=[item], id=sub_id, **fields)
        return stripe_record(event(event_type, sub, created=at))

    def fact(day: int) -> Record:
        return usage_record(
            usage_fact(
                f"two-{day}", "cus_two", "5", event_name="two_sub_calls", timestamp=T0 + day * DAY
            )
        )

    schema = "two_subscriptions_legacy"
    await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    await project(
        conn,
        schema,
        [
            [
                stripe_record(meter_event(meter)),
                snapshot("customer.subscription.created", "sub_two_kept", kept, T0),
                snapshot("customer.subscription.created", "sub_two_gone", gone, T0),
                snapshot(
                    "customer.subscription.deleted",
                    "sub_two_gone",
                    gone,
                    ended,
                    status="canceled",
                    canceled_at=ended,
                    ended_at=ended,
                ),
                fact(2),
                fact(25),
            ]
        ],
    )
    await conn.execute(f"UPDATE {schema}.meter_periods SET subscription = NULL")
    # Anything that recomputes the customer's periods: its meter changed, say.
    changed = stripe_record(meter_event(meter, created=T0 + 20 * DAY, kind="updated"))
    await project(conn, schema, [[changed]], fresh=False)
    query = (
        "SELECT extract(epoch FROM period_end)::bigint, reported_value FROM meter_reconciliation"
    )
    month_end = (
        await fetch(
            conn,
            schema,
            "SELECT max(extract(epoch FROM period_end))::bigint FROM meter_periods WHERE NOT ended",
        )
    )[0][0]
    assert month_end > ended
    assert await fetch(conn, schema, query) == [(month_end, Decimal(10))]


CREDITS = """
SELECT customer, meter, billed_quantity, credited_quantity, amount_credits, delta, status,
       last_event_id
FROM meter_reconciliation ORDER BY customer, meter
"""


LINE_EVENTS = "SELECT line, last_event_id FROM meter_credit_note_lines ORDER BY line"


async def test_units_credited_back_are_not_billed_in_any_order(conn: asyncpg.Connection) -> None:
    """cus_basil's usage matched its invoice; a credit note gives back one unit of its
    `sum` line and an amount of its `count` line. The sum period is `credited` (billed in
    full, then given back: a decision, not a fault); the amount, which is no number of
    units, is only flagged. cus_legacy, already under-billed, gets a unit back too: still
    `under_billed`, by one more. Voided, the notes credit nothing (a same-second update
    with a later event id, saying `issued`, does not undo the void). Any order and any
    duplication of the records give the same rows."""
    scenario = billing_month()
    basil = finalized_invoice(scenario, "cus_basil")
    legacy = finalized_invoice(scenario, "cus_legacy")
    sum_line, count_line, _ = basil["lines"]["data"]
    (legacy_line,) = legacy["lines"]["data"]
    note = credit_note(
        invoice=basil["id"],
        customer="cus_basil",
        lines=[
            credit_note_line(invoice_line_item=sum_line["id"], quantity=1, amount=100),
            credit_note_line(invoice_line_item=count_line["id"], quantity=None, amount=250),
            credit_note_line(),  # a custom line: no usage
        ],
    )
    legacy_note = credit_note(
        era="legacy",
        invoice=legacy["id"],
        customer="cus_legacy",
        lines=[credit_note_line(era="legacy", invoice_line_item=legacy_line["id"], quantity=1)],
    )
    at = T0 + MONTH + 300
    issued_events = [
        event("credit_note.created", note, created=at),
        event("credit_note.created", legacy_note, created=at, era="legacy"),
    ]
    later = T0 + MONTH + 900
    voided_events = [
        event("credit_note.voided", dict(note, status="void"), created=later),
        event("credit_note.voided", dict(legacy_note, status="void"), created=later, era="legacy"),
    ]
    tie = event("credit_note.updated", dict(note, memo="Goodwill"), created=later)
    assert tie["id"] > voided_events[0]["id"]
    issued = [stripe_record(e) for e in issued_events]
    voided = [stripe_record(e) for e in [*voided_events, tie]]
    meters = scenario.meters

    await project(conn, "credited", [scenario.records(), issued])
    credited = await fetch(conn, "credited", CREDITS)
    rows = {row[:2]: row[2:] for row in credited}
    basil_event, legacy_event = (e["id"] for e in issued_events)
    assert rows["cus_basil", meters["sum"]] == (1, 1, 0, 1, "credited", basil_event)
    assert rows["cus_basil", meters["count"]] == (3, 0, 1, 0, "matched", basil_event)
    assert rows["cus_basil", meters["last"]][1:4] == (0, 0, 0)
    legacy_row = (2, 1, 0, Decimal("2.5"), "under_billed", legacy_event)
    assert rows["cus_legacy", meters["sum"]] == legacy_row
    # Facts counted one by one on the fast path, after the credits, agree with a full
    # recompute: one turns the credited period under-billed, one brings it back.
    late = [
        usage_record(usage_fact(f"b-after-credit-{n}", "cus_basil", value, timestamp=T0 + 86_400))
        for n, value in enumerate(["1", "-1"])
    ]
    await project(conn, "whole", [[*scenario.records(), *issued, *late]])
    for fact, status in zip(late, ["under_billed", "credited"], strict=True):
        await project(conn, "credited", [[fact]], fresh=False)
        (row,) = await fetch(
            conn,
            "credited",
            "SELECT status FROM meter_reconciliation WHERE customer = 'cus_basil' "
            f"AND meter = '{meters['sum']}'",
        )
        assert row == (status,)
    assert await fetch(conn, "credited", CREDITS) == await fetch(conn, "whole", CREDITS)
    credited = await fetch(conn, "credited", CREDITS)

    await project(conn, "credited", [voided], fresh=False)
    cancelled = await fetch(conn, "credited", CREDITS)
    rows = {row[:2]: row[2:] for row in cancelled}
    assert rows["cus_basil", meters["sum"]] == (1, 0, 0, 0, "matched", tie["id"])
    assert rows["cus_basil", meters["count"]] == (3, 0, 0, 0, "matched", tie["id"])
    assert rows["cus_legacy", meters["sum"]][1:4] == (0, 0, Decimal("1.5"))

    for seed in range(6):
        rng = random.Random(seed)
        with_notes = [*scenario.records(), *issued, issued[0], *late]
        rng.shuffle(with_notes)
        cut = rng.randrange(1, len(with_notes))
        await project(conn, f"issued{seed}", [with_notes[:cut], with_notes[cut:]])
        assert await fetch(conn, f"issued{seed}", CREDITS) == credited, f"seed {seed}"
        then_void = [*with_notes, *voided, *issued]
        rng.shuffle(then_void)
        await project(conn, f"voided{seed}", [then_void[:cut], then_void[cut:]])
        assert await fetch(conn, f"voided{seed}", CREDITS) == cancelled, f"seed {seed}"
        # A note's lines name the earliest event that showed them, whatever came first.
        for schema in (f"issued{seed}", f"voided{seed}"):
            lines = await fetch(conn, schema, LINE_EVENTS)
            assert lines == await fetch(conn, "credited", LINE_EVENTS), schema
            assert {event_id for _, event_id in lines} == {basil_event, legacy_event}


async def test_a_credit_by_amount_is_not_taken_for_the_quantity_stripe_shows_with_it(
    conn: asyncpg.Connection,
) -> None:
    """Stripe shows `quantity: 1` on a credit note line made by amount (its own example:
    amount 749, quantity 1). cus_basil's `sum` line bills 1 unit for 10 cents: a credit of
    7 cents is money, not a unit (an amount credit); one of 10 cents for 1 unit is the
    unit. Which one came first does not matter."""
    scenario = billing_month()
    basil = finalized_invoice(scenario, "cus_basil")
    lines = [dict(line) for line in basil["lines"]["data"]]
    lines[0].update(amount=10, subtotal=10)
    priced = dict(basil, status="paid", lines=dict(basil["lines"], data=lines))
    paid = stripe_record(event("invoice.paid", priced, created=T0 + MONTH + 180))
    by_amount, by_unit = (
        credit_note(
            invoice=basil["id"],
            customer="cus_basil",
            lines=[credit_note_line(invoice_line_item=lines[0]["id"], quantity=1, amount=cents)],
        )
        for cents in (7, 10)
    )
    notes = [
        stripe_record(event("credit_note.created", note, created=T0 + MONTH + 300 + n))
        for n, note in enumerate((by_amount, by_unit))
    ]
    query = (
        "SELECT billed_quantity, credited_quantity, amount_credits, status "
        f"FROM meter_reconciliation WHERE customer = 'cus_basil' "
        f"AND meter = '{scenario.meters['sum']}'"
    )
    await project(conn, "by_amount", [scenario.records(), [paid, notes[0]]])
    assert await fetch(conn, "by_amount", query) == [(1, 0, 1, "matched")]
    await project(conn, "by_amount", [[notes[1]]], fresh=False)
    assert await fetch(conn, "by_amount", query) == [(1, 1, 1, "credited")]
    await project(conn, "by_unit_first", [[notes[1], *scenario.records()], [notes[0], paid]])
    assert await fetch(conn, "by_unit_first", query) == [(1, 1, 1, "credited")]


async def test_a_credit_note_with_lines_not_in_its_body_makes_its_periods_incomplete(
    conn: asyncpg.Connection,
) -> None:
    """cus_basil's usage matched its invoice. A credit note on that invoice whose body
    carries only its first page of lines (`lines.has_more`), none of them metered, may
    credit a metered line among those not seen: the invoice's periods cannot be judged.
    A later snapshot with every line (one crediting a unit of the `sum` line) judges them,
    whichever arrives first; voided, the note leaves them as they were."""
    scenario = billing_month()
    basil = finalized_invoice(scenario, "cus_basil")
    sum_line = basil["lines"]["data"][0]
    custom = credit_note_line()
    metered = credit_note_line(invoice_line_item=sum_line["id"], quantity=1, amount=100)
    whole = credit_note(invoice=basil["id"], customer="cus_basil", lines=[custom, metered])
    first_page = dict(whole, lines=dict(whole["lines"], data=[custom], has_more=True))
    at = T0 + MONTH + 300
    partial = stripe_record(event("credit_note.created", first_page, created=at))
    complete = stripe_record(event("credit_note.updated", whole, created=at + 60))
    voided = stripe_record(
        event("credit_note.voided", dict(first_page, status="void"), created=at + 120)
    )
    meters = scenario.meters
    statuses = (
        "SELECT meter, status, credited_quantity FROM meter_reconciliation "
        "WHERE customer = 'cus_basil' ORDER BY meter"
    )
    await project(conn, "judged_before", [scenario.records()])
    before = {m: s for m, s, _ in await fetch(conn, "judged_before", statuses)}
    assert set(before.values()) == {"matched"}

    await project(conn, "unseen_credits", [scenario.records(), [partial]])
    rows = {m: (s, c) for m, s, c in await fetch(conn, "unseen_credits", statuses)}
    assert rows == dict.fromkeys(before, ("incomplete", 0))

    expected = {meter: (status, 0) for meter, status in before.items()}
    expected[meters["sum"]] = ("credited", 1)
    for name, batches in (
        ("seen_after", [scenario.records(), [partial], [complete]]),
        ("seen_before", [scenario.records(), [complete], [partial]]),
    ):
        await project(conn, name, batches)
        rows = {m: (s, c) for m, s, c in await fetch(conn, name, statuses)}
        assert rows == expected, name

    await project(conn, "unseen_voided", [scenario.records(), [partial], [voided]])
    rows = {m: (s, c) for m, s, c in await fetch(conn, "unseen_voided", statuses)}
    assert rows == {meter: (status, 0) for meter, status in before.items()}


async def test_unseen_credit_lines_leave_an_under_billed_period_judged(
    conn: asyncpg.Connection,
) -> None:
    """Credits only lower what was billed net: cus_legacy's period, billed less than its
    accepted usage, stays `under_billed` under a note whose lines were not all seen (its
    delta may be larger still). Facts counted on the fast path that bring the usage down
    to what was billed make it `incomplete` (it might be `credited`), and back up, judged
    again: the same rows as one full recompute."""
    scenario = billing_month()
    legacy = finalized_invoice(scenario, "cus_legacy")
    custom = credit_note_line(era="legacy")
    first_page = credit_note(era="legacy", invoice=legacy["id"], customer="cus_legacy")
    first_page["lines"].update(data=[custom], has_more=True)
    partial = stripe_record(
        event("credit_note.created", first_page, created=T0 + MONTH + 300, era="legacy")
    )
    query = (
        "SELECT status, delta, unseen_credits FROM meter_reconciliation "
        f"WHERE customer = 'cus_legacy' AND meter = '{scenario.meters['sum']}'"
    )
    await project(conn, "unseen_legacy", [scenario.records(), [partial]])
    assert await fetch(conn, "unseen_legacy", query) == [("under_billed", Decimal("1.5"), True)]

    late = [
        usage_record(usage_fact(f"l-after-note-{n}", "cus_legacy", value, timestamp=T0 + 86_400))
        for n, value in enumerate(["-1.5", "1"])
    ]
    expected = [("incomplete", Decimal("0.0"), True), ("under_billed", Decimal("1.0"), True)]
    for fact, row in zip(late, expected, strict=True):
        await project(conn, "unseen_legacy", [[fact]], fresh=False)
        assert await fetch(conn, "unseen_legacy", query) == [row]
    await project(conn, "unseen_whole", [[*scenario.records(), partial, *late]])
    assert await fetch(conn, "unseen_legacy", CREDITS) == await fetch(conn, "unseen_whole", CREDITS)


async def test_only_a_new_or_changed_meter_of_a_price_reaches_its_customers(
    conn: asyncpg.Connection,
) -> None:
    """Every subscription event names its prices again. Recomputing every customer on a
    price each time would rescan all their usage batch after batch; only a price seen for
    the first time, or whose meter changed, is handed to the recompute."""
    await migrate(conn, [projection], schema="price_links", record=False)

    async def touched_by(links: list[PriceMeter]) -> set[str]:
        touched = Touched()
        async with conn.transaction():
            await conn.execute("SET LOCAL search_path TO price_links, public")
            await meters_store._prices(conn, links, touched)
        return touched.prices

    first = [
        PriceMeter("price_a", "mtr_a", "evt_1", T0),
        PriceMeter("price_b", "mtr_b", "evt_1", T0),
    ]
    assert await touched_by(first) == {"price_a", "price_b"}
    again = [PriceMeter("price_a", "mtr_a", "evt_2", T0 + 60)]
    assert await touched_by(again) == set()
    assert await touched_by([PriceMeter("price_b", "mtr_c", "evt_3", T0 + 120)]) == {"price_b"}
    # An older event naming another meter loses, and changes nothing.
    assert await touched_by([PriceMeter("price_a", "mtr_z", "evt_0", T0 - 60)]) == set()
    rows = await fetch(conn, "price_links", "SELECT price, meter FROM meter_prices ORDER BY 1")
    assert rows == [("price_a", "mtr_a"), ("price_b", "mtr_c")]


def metered_subscription(
    customer: str,
    meter: dict[str, Any],
    period: tuple[int, int],
    value: str,
    *,
    ended: int | None = None,
) -> list[Record]:
    """A subscription to a price of `meter` for `period`, one usage fact of `value` a day
    into it and, given `ended`, its cancellation then, without a final invoice."""
    start, end = period
    item = subscription_item(item_price=price(meter=meter["id"], unit_amount=None))
    item.update(current_period_start=start, current_period_end=end)
    sub = subscription(customer=customer, items=[item], period_start=start, period_end=end)
    events = [event("customer.subscription.created", sub, created=start)]
    if ended is not None:
        canceled = dict(sub, status="canceled", ended_at=ended, canceled_at=ended)
        events.append(event("customer.subscription.deleted", canceled, created=ended))
    fact = usage_fact(
        f"u-{customer}", customer, value, event_name=meter["event_name"], timestamp=start + DAY
    )
    return [*(stripe_record(e) for e in events), usage_record(fact)]


async def test_usage_never_invoiced_is_unbilled_three_days_after_its_period(
    conn: asyncpg.Connection,
) -> None:
    """A subscription canceled mid-period without `invoice_now`: Stripe never invoices its
    usage, so its period stays `pending` in the table, and `usage_discrepancies` lists it
    as `unbilled` once it ended over three days before the newest event or fact the rows
    reflect (Stripe finalizes a period's invoice within an hour of its end, or within 72
    hours while webhooks fail). A period still running, or one that ended a day before the
    newest fact, is not listed; one that ended four days before, with no invoice, is,
    however long ago that all was."""
    meter = billing_meter(event_name="unbilled_calls")
    # The log's clock, not the wall's: all of it a hundred days ago, as a replay reads it.
    now = int(time.time()) - 100 * DAY
    records = [
        stripe_record(meter_event(meter)),
        *metered_subscription("cus_cut", meter, (T0, T0 + MONTH), "7", ended=T0 + 10 * DAY),
        # Its fact, a day into the period, is the newest of all: the log's clock.
        *metered_subscription("cus_running", meter, (now - DAY - 60, now + 20 * DAY), "3"),
        *metered_subscription("cus_just_ended", meter, (now - 31 * DAY, now - DAY), "2"),
        *metered_subscription("cus_ended_before", meter, (now - 34 * DAY, now - 4 * DAY), "5"),
    ]
    await project(conn, "unbilled", [records])
    statuses = await fetch(conn, "unbilled", "SELECT DISTINCT status FROM meter_reconciliation")
    assert statuses == [("pending",)]
    listed = await fetch(
        conn,
        "unbilled",
        "SELECT customer, status, period_end, delta, billed_quantity FROM usage_discrepancies",
    )
    cut_at = datetime.fromtimestamp(T0 + 10 * DAY, UTC)
    before = datetime.fromtimestamp(now - 4 * DAY, UTC)
    assert listed == [
        ("cus_cut", "unbilled", cut_at, Decimal(7), Decimal(0)),
        ("cus_ended_before", "unbilled", before, Decimal(5), Decimal(0)),
    ]


async def test_a_price_changed_mid_period_splits_the_period_where_the_new_one_begins(
    conn: asyncpg.Connection,
) -> None:
    """Half way through the month the customer moves to another price of the same meter.
    The item's snapshots show the month for both prices; the invoice bills the old price
    for the first half and the new one for the second. Each half is its own row, each
    fact counts in one of them, and both match: the first half's row does not run to the
    month's end over the second half (which read as 800 units under-billed)."""
    meter = billing_meter(event_name="switched_calls")
    old, new = (price(meter=meter["id"], unit_amount=None) for _ in range(2))
    half = T0 + 15 * DAY

    def snapshot(event_type: str, item_price: dict[str, Any], created: int) -> dict[str, Any]:
        item = subscription_item(item_price=item_price, id="si_switched")
        sub = subscription(id="sub_switched", customer="cus_switch", items=[item])
        return event(event_type, sub, created=created)

    lines = [
        invoice_line(
            subscription="sub_switched", line_price=p, quantity=q, period_start=a, period_end=b
        )
        for p, q, a, b in ((old, 1000, T0, half), (new, 800, half, T0 + MONTH))
    ]
    finalized = invoice(
        customer="cus_switch", subscription="sub_switched", status="open", lines=lines
    )
    records = [
        stripe_record(meter_event(meter)),
        stripe_record(snapshot("customer.subscription.created", old, T0)),
        stripe_record(snapshot("customer.subscription.updated", new, half)),
        stripe_record(event("invoice.finalized", finalized, created=T0 + MONTH + 60)),
        *(
            usage_record(
                usage_fact(name, "cus_switch", value, event_name="switched_calls", timestamp=at)
            )
            for name, value, at in (("before", 1000, T0 + DAY), ("after", 800, half + DAY))
        ),
    ]
    rows = (
        "SELECT extract(epoch FROM period_start)::bigint, extract(epoch FROM period_end)::bigint,"
        " reported_value, billed_quantity, delta, status FROM meter_reconciliation"
        " WHERE customer = 'cus_switch' ORDER BY period_start"
    )
    expected = [
        (T0, half, Decimal(1000), Decimal(1000), Decimal(0), "matched"),
        (half, T0 + MONTH, Decimal(800), Decimal(800), Decimal(0), "matched"),
    ]
    got = await rows_in_each_order(
        conn,
        (
            ("switch_one_batch", [records]),
            ("switch_each_alone", [[r] for r in records]),
            ("switch_reversed", [[r] for r in reversed(records)]),
        ),
        rows,
    )
    assert got == dict.fromkeys(got, expected)


async def test_a_fact_stripe_rejected_does_not_move_the_rows_clock(
    conn: asyncpg.Connection,
) -> None:
    """The app reported, on day 2, a fact stamped day 20 (its clock wrong); Stripe
    rejected it. The row reflects that through the error report's event (day 2), not the
    fact's own time: else `usage_discrepancies`' clock would run 18 days ahead and list
    periods as `unbilled` whose invoices Stripe has not finalized yet. In any order, on
    the fast path (the fact after its rejection) and through a recompute alike."""
    meter = billing_meter(event_name="skewed_calls")
    item = subscription_item(item_price=price(meter=meter["id"], unit_amount=None))
    sub = subscription(customer="cus_skew", items=[item])
    reported = [
        usage_fact(name, "cus_skew", 5, event_name="skewed_calls", timestamp=at)
        for name, at in (("kept", T0 + DAY), ("ahead", T0 + 20 * DAY))
    ]
    report = error_report(
        identifiers=["ahead"],
        meter=meter["id"],
        code="timestamp_too_far_in_future",
        at=T0 + 2 * DAY,
    )
    records = [
        stripe_record(meter_event(meter)),
        stripe_record(event("customer.subscription.created", sub, created=T0)),
        *(usage_record(f) for f in reported),
        stripe_record(report),
    ]
    clock = (
        "SELECT reported_value, rejected_value, last_event_id,"
        " extract(epoch FROM last_event_created)::bigint FROM meter_reconciliation"
    )
    got = await rows_in_each_order(
        conn,
        (
            ("skew_one_batch", [records]),
            ("skew_each_alone", [[r] for r in records]),
            ("skew_rejection_first", [records[:2], records[-1:], records[2:-1]]),
        ),
        clock,
    )
    assert got == {
        schema: [(Decimal(10), Decimal(5), report["id"], T0 + 2 * DAY)] for schema in got
    }


async def test_two_subscriptions_on_one_meter_keep_their_whole_periods(
    conn: asyncpg.Connection,
) -> None:
    """A customer with two subscriptions pricing the same meter, the second begun half way
    through the first's month: Stripe bills the meter's usage on each, so neither period
    is cut where the other begins (only a period of the same subscription cuts one)."""
    meter = billing_meter(event_name="twice_calls")
    half = T0 + 15 * DAY
    records = [stripe_record(meter_event(meter))]
    for sub_id, start in (("sub_first", T0), ("sub_second", half)):
        item = subscription_item(
            item_price=price(meter=meter["id"], unit_amount=None),
            period_start=start,
            period_end=start + MONTH,
        )
        sub = subscription(
            id=sub_id,
            customer="cus_twice",
            items=[item],
            period_start=start,
            period_end=start + MONTH,
        )
        records.append(stripe_record(event("customer.subscription.created", sub, created=start)))
    fact = usage_fact("twice", "cus_twice", 3, event_name="twice_calls", timestamp=half + DAY)
    records.append(usage_record(fact))
    rows = (
        "SELECT extract(epoch FROM period_start)::bigint, extract(epoch FROM period_end)::bigint,"
        " reported_value FROM meter_reconciliation WHERE customer = 'cus_twice'"
        " ORDER BY period_start"
    )
    await project(conn, "twice", [records])
    assert await fetch(conn, "twice", rows) == [
        (T0, T0 + MONTH, Decimal(3)),
        (half, half + MONTH, Decimal(3)),
    ]


async def test_a_fact_counts_for_the_clock_no_later_than_it_was_reported(
    conn: asyncpg.Connection,
) -> None:
    """A fact stamped day 20 that reached the log on day 2 (the app's clock wrong; Stripe
    took it, or rejected it without sampling it): the row's newest event is that fact at
    day 2, its report, never day 20, whatever the order and wherever it is counted; its
    version delivered again later does not move it either."""
    meter = billing_meter(event_name="early_calls")
    item = subscription_item(item_price=price(meter=meter["id"], unit_amount=None))
    sub = subscription(customer="cus_early", items=[item])
    fact = usage_fact("ahead", "cus_early", 5, event_name="early_calls", timestamp=T0 + 20 * DAY)
    clock = (
        "SELECT reported_value, last_event_id, extract(epoch FROM last_event_created)::bigint"
        " FROM meter_reconciliation"
    )
    for first, second in ((2, 25), (25, 2)):  # the earlier report first, or delivered again
        delivered = [
            dataclasses.replace(usage_record(fact), offset=n, timestamp_ms=(T0 + day * DAY) * 1000)
            for n, day in enumerate((first, second))
        ]
        records = [
            stripe_record(meter_event(meter)),
            stripe_record(event("customer.subscription.created", sub, created=T0)),
            *delivered,
        ]
        got = await rows_in_each_order(
            conn,
            (
                ("early_one_batch", [records]),
                ("early_each_alone", [[r] for r in records]),
                ("early_fact_first", [records[2:], records[:2]]),
            ),
            clock,
        )
        assert got == {schema: [(Decimal(5), "ahead", T0 + 2 * DAY)] for schema in got}, first


async def test_a_meter_older_than_the_log_is_named_by_status_until_an_event_describes_it(
    conn: asyncpg.Connection, settings: Settings
) -> None:
    """A company that billed by meter before it ran Lattice: its meters' `created` events
    are older than the log (and than backfill's 30 days), so no row can be reconciled for
    them. `lattice status` says so, naming them, until `billing.meter.updated` describes
    each."""
    meter = billing_meter(event_name="old_calls")
    records = metered_subscription("cus_old", meter, (T0, T0 + MONTH), "4")
    # And a customer with no subscription to it (the app's mistake, or one not seen yet).
    stray = usage_fact("u-stray", "cus_stray", "2", event_name="old_calls", timestamp=T0 + DAY)
    records.append(usage_record(stray))
    await project(conn, "projections", [records])
    said = await status_command.warnings(settings, [projection])
    assert len(said) == 1
    assert said[0].startswith(
        f"meters: 1 meter(s) named by prices but described by no event on "
        f"the log ({meter['id']}): their usage is not reconciled."
    )
    assert await fetch(conn, "projections", "SELECT count(*) FROM meter_reconciliation") == [(0,)]
    unplaced = "SELECT identifier, reason FROM unplaced_usage ORDER BY identifier"
    assert await fetch(conn, "projections", unplaced) == [
        ("u-cus_old", "no_meter"),
        ("u-stray", "no_meter"),
    ]
    env = {
        **os.environ,
        "LATTICE_DATABASE_URL": settings.require_database_url(),
        "LATTICE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "LATTICE_TOPIC": settings.topic,
        "LATTICE_USAGE_TOPIC": settings.usage_topic,
    }
    command = [sys.executable, "-m", "deploy.cli", "status", "meters", "--json"]
    shown = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, env=env, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    assert isinstance(orjson.loads(shown.stdout), list)  # stdout stays one JSON array
    assert f"warning: {said[0]}\n" in shown.stderr

    updated = meter_event(meter, created=T0 + MONTH, kind="updated")
    await project(conn, "projections", [[stripe_record(updated)]], fresh=False)
    assert await status_command.warnings(settings, [projection]) == []
    rows = await fetch(
        conn, "projections", "SELECT customer, reported_value FROM meter_reconciliation"
    )
    assert rows == [("cus_old", Decimal(4))]
    assert await fetch(conn, "projections", unplaced) == [("u-stray", "no_period")]
