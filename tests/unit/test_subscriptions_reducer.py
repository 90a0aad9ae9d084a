"""The subscriptions reducer reads every subscription and customer event, in both API
shapes, and orders snapshots as the README says."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from projectors.base import PoisonRecord
from projectors.invoices import projection as invoices
from projectors.invoices.reducer import InvoiceSnapshot
from projectors.subscriptions import projection
from projectors.subscriptions.reducer import (
    SUBSCRIPTION_EVENTS,
    CustomerSnapshot,
    SubscriptionSnapshot,
)
from projectors.subscriptions.snapshot import supersedes
from tests.fixtures import stripe_objects as so
from tests.fixtures.records import as_record

ERAS: tuple[so.Era, ...] = ("legacy", "basil")


def reduce_one(event: dict[str, object]) -> SubscriptionSnapshot | CustomerSnapshot:
    changes = projection.reduce(as_record(event))
    assert len(changes) == 1
    return changes[0]


# Written out, not taken from the reducer: a type dropped there must fail here.
EVERY_SUBSCRIPTION_EVENT = (
    "customer.subscription.created",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.pending_update_applied",
    "customer.subscription.pending_update_expired",
    "customer.subscription.resumed",
    "customer.subscription.trial_will_end",
    "customer.subscription.updated",
)


def test_the_reducer_handles_every_subscription_event() -> None:
    assert set(EVERY_SUBSCRIPTION_EVENT) == SUBSCRIPTION_EVENTS


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("event_type", EVERY_SUBSCRIPTION_EVENT)
def test_every_subscription_event_in_both_shapes_gives_the_snapshot(
    era: so.Era, event_type: str
) -> None:
    yearly = so.price(unit_amount=24_000, interval="year", currency="eur")
    item = so.subscription_item(era=era, item_price=yearly, quantity=3)
    sub = so.subscription(
        era=era,
        customer="cus_A",
        items=[item],
        status="active",
        latest_invoice="in_9",
        currency="eur",
    )

    change = reduce_one(so.event(event_type, sub, era=era, created=so.T0 + 5, account="acct_1"))

    assert isinstance(change, SubscriptionSnapshot)
    assert (change.id, change.customer, change.account) == (sub["id"], "cus_A", "acct_1")
    assert (change.current_period_start, change.current_period_end) == (so.T0, so.T0 + so.MONTH)
    assert change.latest_invoice == "in_9"
    assert change.event_created == so.T0 + 5
    (read,) = change.items
    assert read.id == item["id"]
    assert (read.price, read.product) == (yearly["id"], yearly["product"])
    assert (read.quantity, read.unit_amount, read.currency) == (3, 24_000, "eur")
    assert (read.interval, read.interval_count) == ("year", 1)
    assert (read.current_period_start, read.current_period_end) == (so.T0, so.T0 + so.MONTH)


def test_an_organizations_context_is_not_a_connect_account() -> None:
    """An Organization's endpoint names in `context` the account each event came from;
    `account` stays the Connect account (`account` on the event), or the organization's
    subscriptions would all drop out of MRR, which counts `account IS NULL`."""
    sub = so.subscription(customer="cus_A")
    change = reduce_one(so.event("customer.subscription.updated", sub, context="acct_1Sibling"))
    assert change.account is None
    invoice = so.invoice(customer="cus_A", status="paid")
    (row,) = invoices.reduce(as_record(so.event("invoice.paid", invoice, context="acct_1Sibling")))
    assert isinstance(row, InvoiceSnapshot)
    assert row.account is None
    connect = so.event("customer.subscription.updated", sub, account="acct_1", context="acct_1")
    assert reduce_one(connect).account == "acct_1"


def test_an_item_is_charged_in_the_subscriptions_currency_never_the_prices_default() -> None:
    """A price in several currencies shows its default one on the item: a subscription in
    another is charged that currency's amount (`currency_options`, when expanded), else
    the amount is unknown."""
    options = {"eur": {"tax_behavior": "unspecified", "unit_amount": 1800}}
    shown_usd = [
        so.subscription_item(item_price=so.price(unit_amount=2000, currency_options=options)),
        so.subscription_item(item_price=so.price(unit_amount=2000)),
        so.subscription_item(item_price=so.price(unit_amount=900, currency="eur")),
    ]
    sub = so.subscription(items=shown_usd, currency="eur")
    change = reduce_one(so.event("customer.subscription.updated", sub))
    assert isinstance(change, SubscriptionSnapshot)
    assert [(i.currency, i.unit_amount) for i in change.items] == [
        ("eur", 1800),
        ("eur", None),
        ("eur", 900),
    ]


def test_basil_items_with_different_periods_span_the_subscription_period() -> None:
    early = so.subscription_item(period_start=so.T0, period_end=so.T0 + 10)
    late = so.subscription_item(period_start=so.T0 + 5, period_end=so.T0 + 20)
    sub = so.subscription(era="basil", items=[early, late])

    change = reduce_one(so.event("customer.subscription.updated", sub))

    assert isinstance(change, SubscriptionSnapshot)
    assert (change.current_period_start, change.current_period_end) == (so.T0, so.T0 + 20)
    assert [i.current_period_end for i in change.items] == [so.T0 + 10, so.T0 + 20]


@pytest.mark.parametrize("era", ["legacy", "basil"])
def test_an_items_list_with_more_than_the_webhook_carried_is_marked(era: so.Era) -> None:
    sub = so.subscription(era=era)
    assert sub["items"]["has_more"] is False
    whole = reduce_one(so.event("customer.subscription.updated", sub, era=era))
    sub["items"]["has_more"] = True
    partial = reduce_one(so.event("customer.subscription.updated", sub, era=era))
    assert isinstance(whole, SubscriptionSnapshot)
    assert isinstance(partial, SubscriptionSnapshot)
    assert (whole.items_complete, partial.items_complete) == (True, False)
    assert len(partial.items) == len(whole.items) == 1


def test_expanded_customer_and_latest_invoice_are_read_as_ids() -> None:
    sub = so.subscription(customer=so.customer(id="cus_X"), latest_invoice=so.invoice(id="in_X"))

    change = reduce_one(so.event("customer.subscription.updated", sub))

    assert isinstance(change, SubscriptionSnapshot)
    assert (change.customer, change.latest_invoice) == ("cus_X", "in_X")


@pytest.mark.parametrize(
    ("earlier", "later"),
    [
        ("incomplete", "active"),
        ("trialing", "past_due"),
        ("active", "past_due"),
        ("past_due", "canceled"),
        ("unpaid", "canceled"),
        ("paused", "canceled"),
        ("incomplete", "incomplete_expired"),
    ],
)
def test_within_one_second_the_later_lifecycle_state_wins(earlier: str, later: str) -> None:
    sub_id = so.new_id("sub")
    first = reduce_one(
        so.event("customer.subscription.updated", so.subscription(id=sub_id, status=earlier))
    )
    second = reduce_one(
        so.event("customer.subscription.updated", so.subscription(id=sub_id, status=later))
    )

    assert supersedes(second.version, first.version)
    assert not supersedes(first.version, second.version)


def test_newer_snapshot_wins_over_lifecycle_rank() -> None:
    sub_id = so.new_id("sub")
    failing = so.subscription(id=sub_id, status="past_due")
    recovered = so.subscription(id=sub_id, status="active")

    old = reduce_one(so.event("customer.subscription.updated", failing, created=so.T0))
    new = reduce_one(so.event("customer.subscription.updated", recovered, created=so.T0 + 1))

    assert supersedes(new.version, old.version)


@pytest.mark.parametrize("status", ["canceled", "incomplete_expired"])
def test_an_ended_subscription_beats_any_later_update(status: str) -> None:
    sub_id = so.new_id("sub")
    ended = reduce_one(
        so.event("customer.subscription.deleted", so.subscription(id=sub_id, status=status))
    )
    late = reduce_one(
        so.event(
            "customer.subscription.updated",
            so.subscription(id=sub_id, status="active"),
            created=so.T0 + 3600,
        )
    )

    assert not supersedes(late.version, ended.version)


@pytest.mark.parametrize(
    ("created", "updated", "obj"),
    [
        (
            "customer.subscription.created",
            "customer.subscription.updated",
            lambda **kw: so.subscription(id="sub_S", status="active", **kw),
        ),
        ("customer.created", "customer.updated", lambda **kw: so.customer(id="cus_C", **kw)),
    ],
)
def test_within_one_second_an_objects_first_snapshot_loses_to_the_next(
    created: str, updated: str, obj: Callable[..., dict[str, object]]
) -> None:
    """Created, then updated in the same second (Checkout fills in the customer's email):
    the update wins, though its event id (drawn to lean the wrong way) sorts first."""
    first = reduce_one(so.event(created, obj(), id="evt_1zzz"))
    second = reduce_one(so.event(updated, obj(metadata={"plan": "pro"}), id="evt_1aaa"))

    assert supersedes(second.version, first.version)
    assert not supersedes(first.version, second.version)


def test_the_same_event_twice_has_the_same_version() -> None:
    event = so.event("customer.subscription.updated", so.subscription())

    assert reduce_one(event) == reduce_one(event)
    assert not supersedes(reduce_one(event).version, reduce_one(event).version)


@pytest.mark.parametrize("event_type", ["customer.created", "customer.updated"])
def test_customer_events_give_the_customer(event_type: str) -> None:
    cus = so.customer(email="ap@example.com", name="Acme", delinquent=True)

    change = reduce_one(so.event(event_type, cus, account="acct_1"))

    assert isinstance(change, CustomerSnapshot)
    assert (change.id, change.email, change.name) == (cus["id"], "ap@example.com", "Acme")
    assert (change.delinquent, change.deleted, change.account) == (True, False, "acct_1")


@pytest.mark.parametrize(
    "obj", [so.customer(id="cus_D"), {"id": "cus_D", "object": "customer", "deleted": True}]
)
def test_a_deleted_customer_is_final(obj: dict[str, object]) -> None:
    deleted = reduce_one(so.event("customer.deleted", obj))
    late = reduce_one(so.event("customer.updated", so.customer(id="cus_D"), created=so.T0 + 60))

    assert isinstance(deleted, CustomerSnapshot)
    assert deleted.deleted
    assert not supersedes(late.version, deleted.version)


@pytest.mark.parametrize(
    "event",
    [
        so.event("invoice.paid", so.invoice()),
        so.event("customer.discount.created", {"id": "di_1", "object": "discount"}),
        so.event("customer.source.created", {"id": "card_1", "object": "card"}),
        {
            "id": "evt_thin",
            "object": "v2.core.event",
            "type": "v1.billing.meter.error_report",
            "created": "2026-11-25T10:00:00.123Z",
            "related_object": {"id": "mtr_1"},
        },
    ],
)
def test_other_events_make_no_change(event: dict[str, object]) -> None:
    assert projection.reduce(as_record(event)) == []


@pytest.mark.parametrize(
    "event",
    [
        so.event("customer.subscription.updated", {"object": "subscription", "status": "active"}),
        {**so.event("customer.updated", so.customer()), "created": "yesterday"},
        so.event("customer.subscription.updated", so.subscription(), id=None),
    ],
)
def test_a_snapshot_event_that_cannot_be_read_is_poison(event: dict[str, object]) -> None:
    with pytest.raises(PoisonRecord):
        projection.reduce(as_record(event))
