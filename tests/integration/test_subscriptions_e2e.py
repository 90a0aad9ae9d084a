"""The subscription runtime loop end to end: each scenario's webhooks, in the receiver's
record format, shuffled and duplicated on the real broker, consumed by the real projector
runtime into PostgreSQL; then the rows and the three views."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from deploy.settings import Settings
from projectors.invoices import projection as invoices
from projectors.replay import replay
from projectors.replay_start import StartAt
from projectors.service import dead_letter_producer
from projectors.subscriptions import projection as subscriptions
from tests.fixtures import stripe_objects as so
from tests.fixtures.billing_scenarios import Scenario, all_scenarios
from tests.fixtures.records import log_record
from tests.support.projectors import log_ends, positions, running
from tests.support.stripe_stream import produce
from tests.support.wait import eventually

pytestmark = pytest.mark.integration


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def last_subscription_event(scenario: Scenario) -> dict[str, Any]:
    return [e for e in scenario.events if e["type"].startswith("customer.subscription.")][-1]


async def _caught_up(settings: Settings) -> None:
    ends = await log_ends(settings.kafka_bootstrap, settings.topic)
    url = settings.require_database_url()
    for name in ("subscriptions", "invoices"):
        await eventually(
            lambda name=name: positions(url, name),  # type: ignore[misc]
            lambda found: found == ends,
            timeout=60,
            what=f"{name} at the log end {ends}",
        )


async def _project_scenarios(settings: Settings, era: so.Era) -> dict[str, Scenario]:
    """Every scenario's events, shuffled and a third of them twice, through the runner."""
    scenarios = {s.name: s for s in all_scenarios(era)}
    events = [e for s in scenarios.values() for e in s.events]
    rng = random.Random(era)
    deliveries = events + rng.sample(events, k=len(events) // 3)
    rng.shuffle(deliveries)
    await produce(settings.kafka_bootstrap, settings.topic, [log_record(e) for e in deliveries])
    async with running(settings, [subscriptions, invoices]):
        await _caught_up(settings)
    return scenarios


@pytest.mark.parametrize("era", ["legacy", "basil"])
async def test_every_scenario_ends_in_the_right_rows_and_views(
    settings: Settings, unique: str, era: so.Era
) -> None:
    # Own consumer groups: other tests' runners of these projections read other topics.
    isolated = settings.model_copy(update={"group_prefix": unique})
    scenarios = await _project_scenarios(isolated, era)

    conn = await asyncpg.connect(settings.require_database_url())
    try:
        await _assert_rows(conn, scenarios)
        await _assert_views(conn, scenarios)
    finally:
        await conn.close()


TABLES_AND_VIEWS = (
    "subscriptions",
    "subscription_items",
    "customers",
    "invoices",
    "invoice_lines",
    "past_due_subscriptions",
    "dunning",
    "mrr",
)


async def test_a_replay_of_either_projection_swaps_in_the_same_tables_and_views(
    settings: Settings, unique: str
) -> None:
    isolated = settings.model_copy(update={"group_prefix": unique})
    scenarios = await _project_scenarios(isolated, "basil")
    conn = await asyncpg.connect(settings.require_database_url())
    try:
        live = {
            t: await conn.fetch(f"SELECT * FROM projections.{t} ORDER BY 1")
            for t in TABLES_AND_VIEWS
        }
        for projection in (subscriptions, invoices):
            async with dead_letter_producer(isolated) as dead_letters:
                await replay(
                    isolated,
                    projection,
                    StartAt(from_beginning=True),
                    dead_letters,
                    view_owners=[subscriptions, invoices],
                )
            for table, before in live.items():
                after = await conn.fetch(f"SELECT * FROM projections.{table} ORDER BY 1")
                assert after == before, f"{table} after replaying {projection.name}"
        await _assert_views(conn, scenarios)
    finally:
        await conn.close()


async def _assert_rows(conn: asyncpg.Connection, scenarios: dict[str, Scenario]) -> None:
    for s in scenarios.values():
        sub = await conn.fetchrow(
            "SELECT * FROM projections.subscriptions WHERE id = $1", s.subscription
        )
        assert sub is not None, s.name
        last = last_subscription_event(s)
        assert (sub["status"], sub["customer"]) == (s.status, s.customer["id"]), s.name
        assert sub["last_event_id"] == last["id"], s.name
        assert sub["last_event_created"] == at(last["created"]), s.name
        items = await conn.fetch(
            "SELECT price, quantity FROM projections.subscription_items WHERE subscription = $1",
            s.subscription,
        )
        expected_items = last["data"]["object"]["items"]["data"]
        assert {(i["price"], i["quantity"]) for i in items} == {
            (i["price"]["id"], i["quantity"]) for i in expected_items
        }, s.name
        found = await conn.fetch(
            "SELECT id, status FROM projections.invoices WHERE subscription = $1", s.subscription
        )
        assert {r["id"]: r["status"] for r in found} == s.invoices, s.name
        email = await conn.fetchval(
            "SELECT email FROM projections.customers WHERE id = $1", s.customer["id"]
        )
        assert email == s.customer["email"]

    trial = await conn.fetchrow(
        "SELECT * FROM projections.subscriptions WHERE id = $1",
        scenarios["trial_to_active"].subscription,
    )
    assert trial is not None
    assert trial["trial_end"] == at(so.T0 + 14 * 86_400)
    assert trial["current_period_start"] == trial["trial_end"]

    leaver = await conn.fetchrow(
        "SELECT * FROM projections.subscriptions WHERE id = $1",
        scenarios["cancel_at_period_end"].subscription,
    )
    assert leaver is not None
    assert leaver["cancel_at_period_end"]
    assert leaver["ended_at"] == leaver["current_period_end"] == at(so.T0 + so.MONTH)

    (proration_invoice,) = [i for i, st in scenarios["plan_change"].invoices.items()]
    lines = await conn.fetch(
        "SELECT amount, proration, subscription FROM projections.invoice_lines "
        "WHERE invoice = $1 ORDER BY amount",
        proration_invoice,
    )
    assert [(r["amount"], r["proration"]) for r in lines] == [(-667, True), (2000, True)]
    assert {r["subscription"] for r in lines} == {scenarios["plan_change"].subscription}
    paid_at = await conn.fetchval(
        "SELECT paid_at FROM projections.invoices WHERE id = $1", proration_invoice
    )
    assert paid_at == at(so.T0 + 10 * 86_400)


async def _assert_views(conn: asyncpg.Connection, scenarios: dict[str, Scenario]) -> None:
    overdue = scenarios["still_past_due"]
    (open_invoice,) = overdue.invoices
    (row,) = await conn.fetch("SELECT * FROM projections.past_due_subscriptions")
    assert (row["subscription"], row["customer_email"]) == (
        overdue.subscription,
        overdue.customer["email"],
    )
    assert (row["invoice"], row["amount_due"], row["attempt_count"]) == (open_invoice, 5000, 2)
    retried_at = so.T0 + so.MONTH + 3600 + 3 * 86_400
    assert row["next_payment_attempt"] == at(retried_at + 3 * 86_400)

    dunning = await conn.fetch("SELECT invoice, attempt_count FROM projections.dunning")
    assert [(r["invoice"], r["attempt_count"]) for r in dunning] == [(open_invoice, 2)]

    mrr = await conn.fetch("SELECT currency, mrr, subscriptions FROM projections.mrr")
    earning = [s for s in scenarios.values() if s.status in ("active", "past_due")]
    assert [tuple(r) for r in mrr] == [("usd", sum(s.monthly for s in earning), len(earning))]
