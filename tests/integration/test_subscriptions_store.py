"""The subscriptions store in real PostgreSQL: guards, items, views, any delivery order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projectors.invoices import projection as invoices
from projectors.migrate import migrate
from projectors.subscriptions import projection as subscriptions
from tests.fixtures import stripe_objects as so
from tests.fixtures.lifecycles import billing_history, delivered
from tests.fixtures.tables import apply_events, one, rows
from tests.support.readme import readme_query

pytestmark = pytest.mark.integration
BOTH = (subscriptions, invoices)


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    await migrate(connection, [subscriptions, invoices])
    yield connection
    await connection.close()


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


async def test_an_older_snapshot_never_overwrites_a_newer_one(conn: asyncpg.Connection) -> None:
    sub_id = so.new_id("sub")
    active = so.event(
        "customer.subscription.updated",
        so.subscription(id=sub_id, status="active"),
        created=so.T0 + 10,
    )
    stale = so.event(
        "customer.subscription.created",
        so.subscription(id=sub_id, status="incomplete"),
        created=so.T0,
    )

    await apply_events(conn, BOTH, [active])
    await apply_events(conn, BOTH, [stale])

    row = await one(conn, "subscriptions", sub_id)
    assert (row["status"], row["last_event_id"]) == ("active", active["id"])
    assert row["last_event_created"] == at(so.T0 + 10)


async def test_a_canceled_subscription_is_not_resurrected(conn: asyncpg.Connection) -> None:
    sub_id = so.new_id("sub")
    canceled = so.event(
        "customer.subscription.deleted",
        so.subscription(id=sub_id, status="canceled", canceled_at=so.T0, ended_at=so.T0),
    )
    late = so.event(
        "customer.subscription.updated",
        so.subscription(id=sub_id, status="active"),
        created=so.T0 + 3600,
    )

    await apply_events(conn, BOTH, [canceled, late], batch_sizes=[1])

    row = await one(conn, "subscriptions", sub_id)
    assert (row["status"], row["ended_at"]) == ("canceled", at(so.T0))


async def test_a_duplicate_changes_nothing(conn: asyncpg.Connection) -> None:
    sub = so.subscription(status="active")
    event = so.event("customer.subscription.updated", sub)
    await apply_events(conn, BOTH, [event])
    before = await rows(conn, "subscription_items")

    await apply_events(conn, BOTH, [event, event], batch_sizes=[1])

    assert await rows(conn, "subscription_items") == before
    assert (await one(conn, "subscriptions", sub["id"]))["last_event_id"] == event["id"]


async def test_a_plan_change_replaces_the_items(conn: asyncpg.Connection) -> None:
    sub_id = so.new_id("sub")
    basic = so.subscription_item(item_price=so.price(unit_amount=900))
    pro_price = so.price(unit_amount=4900, interval="year", interval_count=1)
    pro = so.subscription_item(era="legacy", item_price=pro_price, quantity=2)
    before = so.event("customer.subscription.created", so.subscription(id=sub_id, items=[basic]))
    after = so.event(
        "customer.subscription.updated",
        so.subscription(era="legacy", id=sub_id, items=[pro]),
        created=so.T0 + 60,
        era="legacy",
    )

    await apply_events(conn, BOTH, [after, before], batch_sizes=[1])

    (item,) = await rows(conn, "subscription_items")
    assert (item["id"], item["subscription"], item["price"]) == (pro["id"], sub_id, pro_price["id"])
    assert (item["product"], item["quantity"], item["unit_amount"]) == (
        pro_price["product"],
        2,
        4900,
    )
    assert (item["interval"], item["interval_count"]) == ("year", 1)
    assert (item["last_event_id"], item["current_period_start"]) == (after["id"], at(so.T0))


async def test_a_deleted_customer_stays_deleted(conn: asyncpg.Connection) -> None:
    cus = so.customer()
    deleted = so.event("customer.deleted", cus, created=so.T0)
    late = so.event("customer.updated", {**cus, "email": "new@example.com"}, created=so.T0 + 5)

    await apply_events(conn, BOTH, [deleted, late])

    row = await one(conn, "customers", cus["id"])
    assert (row["deleted"], row["email"]) == (True, cus["email"])


async def test_mrr_normalises_intervals_per_currency_and_skips_trials(
    conn: asyncpg.Connection,
) -> None:
    def sub(
        status: str,
        *prices: tuple[dict[str, Any], int | None],
        currency: str = "usd",
        livemode: bool = True,
    ) -> dict[str, Any]:
        items = [so.subscription_item(item_price=p, quantity=q) for p, q in prices]
        return so.event(
            "customer.subscription.updated",
            so.subscription(status=status, items=items, currency=currency, livemode=livemode),
        )

    # A price in several currencies shows its default one; a subscription in another is
    # charged that currency's amount, known only from an expanded `currency_options`.
    # More items than the webhook carries (it has the first 10): summed from those seen,
    # and counted in `items_not_seen`.
    crowded = so.subscription(
        status="active",
        items=[so.subscription_item(item_price=so.price(unit_amount=500))],
        livemode=True,
    )
    crowded["items"]["has_more"] = True
    eur_option = {
        "eur": {
            "custom_unit_amount": None,
            "tax_behavior": "unspecified",
            "unit_amount": 1800,
            "unit_amount_decimal": "1800",
        }
    }

    await apply_events(
        conn,
        BOTH,
        [
            sub("active", (so.price(unit_amount=2000), 3)),  # 6000 / month
            so.event("customer.subscription.updated", crowded),  # 500 and items not seen
            sub("past_due", (so.price(unit_amount=120_000, interval="year"), 1)),  # 10000 / month
            sub(
                "active",
                (so.price(unit_amount=3000, interval="month", interval_count=3), 1),
                (so.price(unit_amount=5, meter="mtr_1"), None),
            ),  # 1000 + metered
            sub(
                "active",
                (so.price(unit_amount=1200, interval="week", currency="eur"), 1),
                currency="eur",
            ),  # 5200
            sub(
                "active",
                (so.price(unit_amount=2000, currency_options=eur_option), 2),
                currency="eur",
            ),  # 3600, never 4000 usd
            sub("active", (so.price(unit_amount=2000), 2), currency="eur"),  # unknown: nothing
            # A metered item that shows a quantity still counts nothing.
            sub(
                "active",
                (so.price(unit_amount=5, meter="mtr_2"), 7),
                (so.price(unit_amount=100), 1),
            ),
            # A tiered price: its tiers are not in the webhook, so nothing, but counted,
            # beside a seat that counts (5000).
            sub(
                "active",
                (so.price(unit_amount=None, billing_scheme="tiered", tiers_mode="graduated"), 4),
                (so.price(unit_amount=5000), 1),
            ),
            # Test mode (`stripe listen` forwards it to the same endpoint): a row of its own.
            sub("active", (so.price(unit_amount=700), 1), livemode=False),
            sub("trialing", (so.price(unit_amount=9900), 1)),
            sub("canceled", (so.price(unit_amount=9900), 1)),
            sub("unpaid", (so.price(unit_amount=9900), 1)),
            # Payment collection paused: still `active`, but nothing is billed.
            so.event(
                "customer.subscription.updated",
                so.subscription(
                    status="active",
                    items=[so.subscription_item(item_price=so.price(unit_amount=9900))],
                    pause_collection={"behavior": "void", "resumes_at": None},
                ),
            ),
            # A connected account's own subscription: its revenue, not the platform's.
            so.event(
                "customer.subscription.updated",
                so.subscription(
                    status="active",
                    items=[so.subscription_item(item_price=so.price(unit_amount=9900))],
                ),
                account="acct_1Standard",
            ),
        ],
    )

    mrr = {
        (r["currency"], r["livemode"]): (
            r["mrr"],
            r["subscriptions"],
            r["items_not_seen"],
            r["items_not_priced"],
        )
        for r in await rows(conn, "mrr")
    }
    assert mrr == {
        ("usd", True): (22_600, 6, 1, 1),  # the tiered item
        ("eur", True): (8_800, 2, 0, 1),  # the usd price without its eur amount
        ("usd", False): (700, 1, 0, 0),
    }


async def test_past_due_subscriptions_show_who_owes_what(conn: asyncpg.Connection) -> None:
    cus = so.customer(email="ap@acme.example")
    sub_id = so.new_id("sub")
    paid = so.invoice(subscription=sub_id, customer=cus["id"], status="paid", created=so.T0 - 9)
    failing = so.invoice(
        era="legacy",
        subscription=sub_id,
        customer=cus["id"],
        status="open",
        attempt_count=2,
        attempted=True,
        next_payment_attempt=so.T0 + 86_400,
    )
    # Last month's invoice, given up on by the retries and left open: still owed.
    older = so.invoice(
        subscription=sub_id,
        customer=cus["id"],
        status="open",
        attempt_count=4,
        attempted=True,
        created=so.T0 - 5,
    )
    sub = so.subscription(
        id=sub_id, customer=cus["id"], status="past_due", latest_invoice=failing["id"]
    )
    healthy = so.subscription(customer=cus["id"], status="active")
    # Retries exhausted, set to "mark the invoice uncollectible, the subscription unpaid":
    # nothing is open, and yet it is owed.
    given_up_id = so.new_id("sub")
    given_up_invoice = so.invoice(
        subscription=given_up_id,
        customer=cus["id"],
        status="uncollectible",
        attempt_count=4,
        attempted=True,
    )
    given_up = so.subscription(
        id=given_up_id, customer=cus["id"], status="unpaid", latest_invoice=given_up_invoice["id"]
    )

    await apply_events(
        conn,
        BOTH,
        [
            so.event("customer.created", cus),
            so.event("invoice.paid", paid),
            so.event("invoice.payment_failed", older),
            so.event("invoice.payment_failed", failing, era="legacy"),
            so.event("customer.subscription.updated", sub),
            so.event("customer.subscription.updated", healthy),
            so.event("invoice.marked_uncollectible", given_up_invoice),
            so.event("customer.subscription.updated", given_up),
        ],
    )

    row, unpaid = sorted(
        await rows(conn, "past_due_subscriptions"), key=lambda r: r["status"] == "unpaid"
    )
    assert (row["subscription"], row["customer_email"], row["status"]) == (
        sub_id,
        "ap@acme.example",
        "past_due",
    )
    assert (row["invoice"], row["amount_due"], row["attempt_count"]) == (failing["id"], 2000, 2)
    assert row["next_payment_attempt"] == at(so.T0 + 86_400)
    assert (row["open_invoices"], row["total_remaining"]) == (2, 4000)
    assert (row["uncollectible_invoices"], row["uncollectible_remaining"]) == (0, None)
    assert (unpaid["subscription"], unpaid["invoice"], unpaid["open_invoices"]) == (
        given_up_id,
        None,
        0,
    )
    assert (unpaid["uncollectible_invoices"], unpaid["uncollectible_remaining"]) == (1, 2000)
    assert unpaid["currency"] == given_up["currency"] == "usd"  # with no open invoice too


async def _fresh_schema(conn: asyncpg.Connection, name: str) -> None:
    await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    await migrate(conn, [subscriptions, invoices], schema=name, record=False)


TABLES = (
    "subscriptions",
    "subscription_items",
    "customers",
    "invoices",
    "invoice_lines",
    "invoice_payments",
    "past_due_subscriptions",
    "dunning",
    "mrr",
)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
async def test_any_delivery_in_any_batches_ends_in_the_tables_of_the_true_order(
    conn: asyncpg.Connection, data: st.DataObject
) -> None:
    history = data.draw(billing_history())
    arrived = data.draw(delivered(history))
    batches = data.draw(st.lists(st.integers(min_value=1, max_value=5), max_size=len(arrived)))
    await _fresh_schema(conn, "ordered")
    await _fresh_schema(conn, "arrived")

    await apply_events(conn, BOTH, history, schema="ordered")
    await apply_events(conn, BOTH, arrived, schema="arrived", batch_sizes=batches)

    for table in TABLES:
        assert await rows(conn, table, schema="arrived") == await rows(
            conn, table, schema="ordered"
        ), table
    assert await rows(conn, "subscriptions", schema="ordered")


async def test_mrr_counts_package_and_decimal_prices_as_stripe_charges_them(
    conn: asyncpg.Connection,
) -> None:
    """A package price charges `unit_amount` per package of `divide_by` units, rounded up
    or down (25 units in tens: 3 packages up, 2 down); a price in fractions of a cent has
    no `unit_amount`, only `unit_amount_decimal` (10,000 units at half a cent: 5,000);
    a legacy plan says the same as `transform_usage` and `amount_decimal`."""

    def package(round_: str, currency: str) -> dict[str, Any]:
        return so.price(
            unit_amount=500,
            currency=currency,
            transform_quantity={"divide_by": 10, "round": round_},
        )

    half_cent = so.price(unit_amount=None, unit_amount_decimal="0.5", currency="gbp")
    legacy_plan = {
        "id": so.new_id("plan"),
        "object": "plan",
        "active": True,
        "amount": None,
        "amount_decimal": "0.25",
        "billing_scheme": "per_unit",
        "currency": "chf",
        "interval": "month",
        "interval_count": 1,
        "product": so.new_id("prod"),
        "transform_usage": {"divide_by": 100, "round": "up"},
        "usage_type": "licensed",
    }
    plan_item = so.subscription_item(item_price=so.price(), quantity=250)
    plan_item["price"] = None
    plan_item["plan"] = legacy_plan
    cases = [
        ("usd", [so.subscription_item(item_price=package("up", "usd"), quantity=25)]),
        ("eur", [so.subscription_item(item_price=package("down", "eur"), quantity=25)]),
        ("gbp", [so.subscription_item(item_price=half_cent, quantity=10_000)]),
        ("chf", [plan_item]),  # 3 packages of 100 at a quarter of a cent
    ]
    events = [
        so.event(
            "customer.subscription.updated",
            so.subscription(status="active", items=items, currency=currency, livemode=True),
        )
        for currency, items in cases
    ]
    await apply_events(conn, BOTH, events)
    mrr = await conn.fetch(
        "SELECT currency, mrr FROM projections.mrr WHERE livemode ORDER BY currency"
    )
    assert [(r["currency"], r["mrr"]) for r in mrr] == [
        ("chf", 1),  # 0.75, rounded once per currency
        ("eur", 1000),
        ("gbp", 5000),
        ("usd", 1500),
    ]


async def test_the_readme_revenue_at_risk_query_sums_past_due_items(
    conn: asyncpg.Connection,
) -> None:
    query = readme_query("    -- revenue at risk", "GROUP BY 1;")
    at_risk = so.subscription(
        status="past_due",
        items=[so.subscription_item(item_price=so.price(unit_amount=2000), quantity=3)],
        livemode=True,
    )
    fine = so.subscription(
        status="active",
        items=[so.subscription_item(item_price=so.price(unit_amount=900), quantity=1)],
        livemode=True,
    )
    await apply_events(
        conn, BOTH, [so.event("customer.subscription.updated", s) for s in (at_risk, fine)]
    )
    found = await conn.fetch(query)
    assert [(r["currency"], r["monthly_at_risk"]) for r in found] == [("usd", 6000)]
