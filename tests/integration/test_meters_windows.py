"""Meters fed pre-aggregated usage (`event_time_window`: `hour` or `day`): Stripe keeps
only the newest meter event sent in each window of a customer's usage, so of its facts
only the one sent last in each UTC hour or day of a period counts."""

from __future__ import annotations

import dataclasses
import random
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from projectors.base import Record
from tests.fixtures.stripe_objects import (
    MONTH,
    T0,
    event,
    invoice,
    invoice_line,
    price,
    subscription,
    subscription_item,
)
from tests.integration.test_meters_store import rows_in_each_order
from tests.support.meter_payloads import (
    billing_meter,
    error_report,
    meter_event,
    stripe_record,
    usage_fact,
    usage_record,
)
from tests.support.meter_scenario import DAY

pytestmark = pytest.mark.integration


@pytest.fixture
async def conn(database_url: str) -> Any:
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


async def test_a_pre_aggregated_meter_counts_the_newest_fact_sent_in_each_window(
    conn: asyncpg.Connection,
) -> None:
    """A meter with `event_time_window: hour` is fed running totals: Stripe keeps only the
    newest meter event sent in each hour of a customer's usage (not the one stamped
    latest), so the period bills 6 (hour one's last sent) + 2 (hour two's), not the sum of
    every fact. Hour two's newest, 4, Stripe rejected: the app reported 6 + 4 = 10, Stripe
    kept 6 + 2 = 8, and the invoice's 8 matches. In any order of arrival, on the
    incremental path (each record alone) as through a recompute."""
    meter = billing_meter(event_name="hourly_totals", event_time_window="hour")
    the_price = price(meter=meter["id"], unit_amount=None)
    sub = subscription(customer="cus_hourly", items=[subscription_item(item_price=the_price)])
    hour_one, hour_two = T0 + DAY, T0 + DAY + 3_600
    sent = [  # identifier, value, its time, when its record reached the log
        ("h1-first", 5, hour_one + 600, hour_one + 700),
        ("h1-second", 7, hour_one + 1_200, hour_one + 1_300),
        ("h1-last-sent", 6, hour_one + 900, hour_one + 1_800),  # stamped before h1-second
        ("h2-kept", 2, hour_two + 60, hour_two + 120),
        ("h2-rejected", 4, hour_two + 600, hour_two + 660),
    ]
    facts = [
        dataclasses.replace(
            usage_record(
                usage_fact(name, "cus_hourly", value, event_name="hourly_totals", timestamp=at)
            ),
            timestamp_ms=logged * 1000,
        )
        for name, value, at, logged in sent
    ]
    final = invoice(
        status="open",
        customer="cus_hourly",
        subscription=sub["id"],
        lines=[invoice_line(line_price=the_price, quantity=8, subscription=sub["id"])],
    )
    records = [
        stripe_record(meter_event(meter)),
        stripe_record(event("customer.subscription.created", sub, created=T0)),
        *facts,
        stripe_record(
            error_report(identifiers=["h2-rejected"], meter=meter["id"], at=hour_two + 900)
        ),
        stripe_record(event("invoice.finalized", final, created=T0 + MONTH + 60)),
    ]
    row = (
        "SELECT reported_value, rejected_value, billed_quantity, delta, status, reported_facts,"
        " rejected_facts FROM meter_reconciliation"
    )
    expected = [(Decimal(10), Decimal(2), Decimal(8), Decimal(0), "matched", 2, 1)]
    shuffled = random.Random(7).sample(records, len(records))
    got = await rows_in_each_order(
        conn,
        (
            ("hourly_one_batch", [records]),
            ("hourly_each_alone", [[r] for r in records]),
            ("hourly_facts_last", [[r] for r in records[:2] + records[-2:] + records[2:-2]]),
            ("hourly_shuffled", [[r] for r in shuffled]),
        ),
        row,
    )
    assert got == dict.fromkeys(got, expected)


async def test_which_fact_a_window_keeps_follows_when_each_was_first_logged_in_any_order(
    conn: asyncpg.Connection,
) -> None:
    """In one hour of a `sum` meter fed pre-aggregated usage, fact a (5) was logged at
    10:11 and again at 10:30, fact b (7) at 10:21: b was sent after a's first copy, so
    the hour bills 7, also when a's later copy arrives before its earlier one (the
    earlier copy moves a's sending time back, and the hour is judged again). A `last`
    meter fed pre-aggregated usage takes the newest of what its windows keep: C (6),
    stamped 10:30 but sent after D (9, stamped 10:50), replaced D, so the last value is 6."""
    totals = billing_meter(event_name="hour_sums", event_time_window="hour")
    gauge = billing_meter(event_name="hour_gauge", formula="last", event_time_window="hour")
    prices = [price(meter=m["id"], unit_amount=None) for m in (totals, gauge)]
    sub = subscription(customer="cus_sent", items=[subscription_item(item_price=p) for p in prices])
    ten = T0 + DAY + 10 * 3_600

    def logged(name: str, meter: dict[str, Any], value: int, at: int, when: int) -> Record:
        fact = usage_fact(name, "cus_sent", value, event_name=meter["event_name"], timestamp=at)
        return dataclasses.replace(usage_record(fact), timestamp_ms=when * 1000)

    a_first = logged("a", totals, 5, ten + 600, ten + 660)
    a_again = logged("a", totals, 5, ten + 600, ten + 1_800)
    b = logged("b", totals, 7, ten + 1_200, ten + 1_260)
    d = logged("d", gauge, 9, ten + 3_000, ten + 3_060)
    c = logged("c", gauge, 6, ten + 1_800, ten + 3_300)
    setup = [
        stripe_record(meter_event(totals)),
        stripe_record(meter_event(gauge)),
        stripe_record(event("customer.subscription.created", sub, created=T0)),
    ]
    rows = "SELECT event_name, reported_value, reported_facts FROM meter_reconciliation ORDER BY 1"
    got = await rows_in_each_order(
        conn,
        (
            ("sent_one_batch", [[*setup, a_first, b, a_again, d, c]]),
            ("sent_in_log_order", [setup, [a_first], [b], [a_again], [d], [c]]),
            ("sent_later_copy_first", [setup, [a_again, b], [a_first], [c], [d]]),
        ),
        rows,
    )
    assert got == {
        schema: [("hour_gauge", Decimal(6), 1), ("hour_sums", Decimal(7), 1)] for schema in got
    }


async def test_a_daily_count_counts_days_and_a_period_boundary_cuts_a_day_in_two(
    conn: asyncpg.Connection,
) -> None:
    """A `count` meter fed pre-aggregated daily usage counts the days with usage (each UTC
    day's last fact sent), not the facts. The periods renew at 16:00 UTC, inside a day:
    that day's fact before the renewal counts in the first period, the one after it in
    the second, each on its side (the first period's invoice was finalized before the
    second fact was sent, so Stripe could not have taken it back)."""
    meter = billing_meter(event_name="active_days", formula="count", event_time_window="day")
    the_price = price(meter=meter["id"], unit_amount=None)

    def period(start: int) -> dict[str, Any]:
        item = subscription_item(item_price=the_price, period_start=start, period_end=start + MONTH)
        return subscription(
            customer="cus_days", items=[item], period_start=start, period_end=start + MONTH
        )

    first, renewed = period(T0), period(T0 + MONTH)
    renewed["id"] = first["id"]
    renewed["items"]["data"][0]["subscription"] = first["id"]
    midnight = T0 + 8 * 3_600  # T0 is 16:00 UTC
    sent = [  # identifier, when (each logged a minute later)
        ("day1-morning", midnight + 10 * 3_600),
        ("day1-noon", midnight + 12 * 3_600),
        ("day2", midnight + DAY + 9 * 3_600),
        ("renewal-day-before", T0 + MONTH - 6 * 3_600),
        ("renewal-day-after", T0 + MONTH + 4 * 3_600),
    ]
    facts = [
        dataclasses.replace(
            usage_record(usage_fact(name, "cus_days", 1, event_name="active_days", timestamp=at)),
            timestamp_ms=(at + 60) * 1000,
        )
        for name, at in sent
    ]
    records = [
        stripe_record(meter_event(meter)),
        stripe_record(event("customer.subscription.created", first, created=T0)),
        stripe_record(event("customer.subscription.updated", renewed, created=T0 + MONTH)),
        *facts,
    ]
    got = await rows_in_each_order(
        conn,
        (
            ("days_one_batch", [records]),
            ("days_each_alone", [[r] for r in records]),
            ("days_reversed", [[r] for r in reversed(records)]),
        ),
        "SELECT extract(epoch FROM period_start)::bigint, reported_value, reported_facts"
        " FROM meter_reconciliation ORDER BY period_start",
    )
    both_periods = [(T0, Decimal(3), 3), (T0 + MONTH, Decimal(1), 1)]
    assert got == dict.fromkeys(got, both_periods)


def sent(meter: dict[str, Any], customer: str, name: str, value: int, at: int, **kw: Any) -> Record:
    """The fact `name` stamped `at`, its record logged a minute later."""
    fact = usage_fact(name, customer, value, event_name=meter["event_name"], timestamp=at, **kw)
    return dataclasses.replace(usage_record(fact), timestamp_ms=(at + 60) * 1000)


async def test_a_cancelled_window_winner_gives_way_to_the_fact_it_replaced(
    conn: asyncpg.Connection,
) -> None:
    """In one hour of a `sum` meter fed running totals, 5 was sent, then 7. The app then
    cancels 7 (a meter event adjustment): the hour bills the 5 it had replaced, not 0 and
    not 12, whether the cancel is logged before its report or after it."""
    meter = billing_meter(event_name="hour_totals", event_time_window="hour")
    sub = subscription(
        customer="cus_cancel",
        items=[subscription_item(item_price=price(meter=meter["id"], unit_amount=None))],
    )
    hour = T0 + DAY + 3 * 3_600
    setup = [
        stripe_record(meter_event(meter)),
        stripe_record(event("customer.subscription.created", sub, created=T0)),
    ]
    first = sent(meter, "cus_cancel", "first", 5, hour + 60)
    winner = sent(meter, "cus_cancel", "winner", 7, hour + 600)
    cancel = sent(meter, "cus_cancel", "winner", 7, hour + 900, action="cancel")
    got = await rows_in_each_order(
        conn,
        (
            ("cancel_one_batch", [[*setup, first, winner, cancel]]),
            ("cancel_in_log_order", [setup, [first], [winner], [cancel]]),
            ("cancel_first", [setup, [cancel], [winner], [first]]),
        ),
        "SELECT reported_value, reported_facts FROM meter_reconciliation",
    )
    first_alone = [(Decimal(5), 1)]
    assert got == dict.fromkeys(got, first_alone)


async def test_a_day_window_is_a_utc_day_whatever_the_sessions_time_zone(
    conn: asyncpg.Connection,
) -> None:
    """The database session in India's time (+05:30, as a server's `TimeZone` may be): a
    `count` meter fed daily totals still counts UTC days. 17:00 and 20:00 UTC are one UTC
    day but two days in India; 19:00 UTC the next day is a second UTC day: 2 days, not 3."""
    await conn.execute("SET TimeZone = 'Asia/Kolkata'")
    meter = billing_meter(event_name="days_used", formula="count", event_time_window="day")
    sub = subscription(
        customer="cus_ist",
        items=[subscription_item(item_price=price(meter=meter["id"], unit_amount=None))],
    )
    midnight = T0 + 8 * 3_600  # T0 is 16:00 UTC
    records = [
        stripe_record(meter_event(meter)),
        stripe_record(event("customer.subscription.created", sub, created=T0)),
        sent(meter, "cus_ist", "evening", 1, midnight + 17 * 3_600),
        sent(meter, "cus_ist", "late", 1, midnight + 20 * 3_600),
        sent(meter, "cus_ist", "next-day", 1, midnight + DAY + 19 * 3_600),
    ]
    got = await rows_in_each_order(
        conn,
        (("ist_one_batch", [records]), ("ist_each_alone", [[r] for r in records])),
        "SELECT reported_value, reported_facts FROM meter_reconciliation",
    )
    two_days = [(Decimal(2), 2)]
    assert got == dict.fromkeys(got, two_days)
