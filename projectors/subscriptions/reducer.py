"""Subscriptions, their items and customers, from snapshot events (pure).

One event becomes at most one change: the snapshot it carries, stamped with its `version`
(see `snapshot.py`). Events of other types make no change. Both API shapes are read:
before 2025-03-31 `current_period_*` sits on the subscription, from then on on each item.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from projectors.base import Record
from projectors.subscriptions.snapshot import (
    LIVE,
    TERMINAL,
    Event,
    declared_elsewhere,
    exact_decimal,
    integer,
    list_data,
    mapping,
    object_id,
    progress,
    read_event,
    ref,
    text,
    version,
)

SUBSCRIPTION_EVENTS = frozenset(
    f"customer.subscription.{suffix}"
    for suffix in (
        "created",
        "updated",
        "deleted",
        "paused",
        "resumed",
        "pending_update_applied",
        "pending_update_expired",
        "trial_will_end",
    )
)
CUSTOMER_EVENTS = frozenset({"customer.created", "customer.updated", "customer.deleted"})
HANDLED = SUBSCRIPTION_EVENTS | CUSTOMER_EVENTS

# Lifecycle order, for snapshots that share a `created` second.
SUBSCRIPTION_RANK: Mapping[str, int] = {
    "incomplete": 0,
    "trialing": 1,
    "active": 1,
    "past_due": 2,
    "unpaid": 2,
    "paused": 2,
    "canceled": 3,
    "incomplete_expired": 3,
}
TERMINAL_SUBSCRIPTION = frozenset({"canceled", "incomplete_expired"})


@dataclass(slots=True)
class Item:
    """One subscription item row."""

    id: str
    price: str | None
    product: str | None
    quantity: int | None
    unit_amount: int | None
    currency: str | None
    interval: str | None
    interval_count: int | None
    usage_type: str | None
    meter: str | None
    current_period_start: int | None
    current_period_end: int | None
    unit_amount_decimal: Decimal | None = None  # exact, fractions of the minor unit too
    transform_divide_by: int | None = None  # a package price: units per package
    transform_round: str | None = None  # `up` or `down` to whole packages


@dataclass(slots=True)
class SubscriptionSnapshot:
    """A subscription as one event shows it, with its items."""

    id: str
    version: str
    event_id: str
    event_created: int
    customer: str | None
    account: str | None
    status: str
    cancel_at_period_end: bool
    cancel_at: int | None
    current_period_start: int | None
    current_period_end: int | None
    trial_start: int | None
    trial_end: int | None
    canceled_at: int | None
    ended_at: int | None
    latest_invoice: str | None
    collection_method: str | None
    currency: str | None
    created: int | None
    livemode: bool
    items: tuple[Item, ...]
    pause_collection: str | None = None
    # False when the webhook's `items` list said `has_more` (it carries the first 10 of up
    # to 20): the items not seen count nowhere, so `mrr` says how many such it summed.
    items_complete: bool = True


@dataclass(slots=True)
class CustomerSnapshot:
    """A customer as one event shows it."""

    id: str
    version: str
    event_id: str
    event_created: int
    email: str | None
    name: str | None
    delinquent: bool | None
    deleted: bool
    account: str | None
    created: int | None
    livemode: bool


Change = SubscriptionSnapshot | CustomerSnapshot


def reduce(record: Record) -> list[Change]:
    """The change one record makes: a subscription or customer snapshot, or nothing."""
    if declared_elsewhere(record, HANDLED):
        return []
    event = read_event(record)
    if event is None:
        return []
    if event.type in SUBSCRIPTION_EVENTS:
        return [subscription_snapshot(event)]
    if event.type in CUSTOMER_EVENTS:
        return [customer_snapshot(event)]
    return []


def subscription_snapshot(event: Event) -> SubscriptionSnapshot:
    """Read a subscription snapshot in either API shape."""
    obj = event.object
    sub_id = object_id(event, "sub_")
    status = text(obj.get("status")) or "incomplete"
    terminal = status in TERMINAL_SUBSCRIPTION or event.type == "customer.subscription.deleted"
    legacy_start = integer(obj.get("current_period_start"))
    legacy_end = integer(obj.get("current_period_end"))
    items = tuple(
        _item(raw, legacy_start, legacy_end, text(obj.get("currency")))
        for raw in list_data(obj.get("items"))
        if type(raw) is dict and type(raw.get("id")) is str
    )
    # Since basil each item has its own period; the subscription's is their span.
    starts = [i.current_period_start for i in items if i.current_period_start is not None]
    ends = [i.current_period_end for i in items if i.current_period_end is not None]
    return SubscriptionSnapshot(
        id=sub_id,
        version=version(
            TERMINAL if terminal else LIVE,
            event.created,
            SUBSCRIPTION_RANK.get(status, 0),
            progress(event),
            event.id,
            event.api_version,
        ),
        event_id=event.id,
        event_created=event.created,
        customer=ref(obj.get("customer")),
        account=event.account,
        status=status,
        cancel_at_period_end=obj.get("cancel_at_period_end") is True,
        cancel_at=integer(obj.get("cancel_at")),
        current_period_start=legacy_start
        if legacy_start is not None
        else min(starts, default=None),
        current_period_end=legacy_end if legacy_end is not None else max(ends, default=None),
        trial_start=integer(obj.get("trial_start")),
        trial_end=integer(obj.get("trial_end")),
        canceled_at=integer(obj.get("canceled_at")),
        ended_at=integer(obj.get("ended_at")),
        latest_invoice=ref(obj.get("latest_invoice")),
        collection_method=text(obj.get("collection_method")),
        # "Pause payment collection" keeps the status `active`: its behavior says so.
        pause_collection=text(mapping(obj.get("pause_collection")).get("behavior")),
        currency=text(obj.get("currency")),
        created=integer(obj.get("created")),
        livemode=obj.get("livemode") is True or event.livemode,
        items=items,
        items_complete=mapping(obj.get("items")).get("has_more") is not True,
    )


def _item(
    raw: Mapping[str, Any], legacy_start: int | None, legacy_end: int | None, billed_in: str | None
) -> Item:
    # `price` is always expanded on items; very old payloads only have `plan`.
    price = raw.get("price") if type(raw.get("price")) is dict else raw.get("plan")
    price = mapping(price)
    currency, unit_amount, exact = _charged(price, billed_in)
    transform = mapping(price.get("transform_quantity")) or mapping(price.get("transform_usage"))
    recurring = mapping(price.get("recurring"))
    interval = text(recurring.get("interval")) or text(price.get("interval"))
    interval_count = integer(recurring.get("interval_count")) or integer(
        price.get("interval_count")
    )
    start = integer(raw.get("current_period_start"))
    end = integer(raw.get("current_period_end"))
    return Item(
        id=str(raw["id"]),
        price=ref(raw.get("price")) or ref(raw.get("plan")),
        product=ref(price.get("product")),
        quantity=integer(raw.get("quantity")),
        unit_amount=unit_amount,
        currency=currency,
        interval=interval,
        interval_count=interval_count,
        usage_type=text(recurring.get("usage_type")) or text(price.get("usage_type")),
        meter=ref(recurring.get("meter")) or ref(price.get("meter")),
        current_period_start=start if start is not None else legacy_start,
        current_period_end=end if end is not None else legacy_end,
        unit_amount_decimal=exact,
        transform_divide_by=integer(transform.get("divide_by")),
        transform_round=text(transform.get("round")),
    )


def customer_snapshot(event: Event) -> CustomerSnapshot:
    """Read a customer snapshot; `customer.deleted` (or `deleted: true`) is terminal."""
    obj = event.object
    deleted = event.type == "customer.deleted" or obj.get("deleted") is True
    delinquent = obj.get("delinquent")
    return CustomerSnapshot(
        id=object_id(event, "cus_"),
        version=version(
            TERMINAL if deleted else LIVE,
            event.created,
            0,
            progress(event),
            event.id,
            event.api_version,
        ),
        event_id=event.id,
        event_created=event.created,
        email=text(obj.get("email")),
        name=text(obj.get("name")),
        delinquent=delinquent if isinstance(delinquent, bool) else None,
        deleted=deleted,
        account=event.account,
        created=integer(obj.get("created")),
        livemode=obj.get("livemode") is True or event.livemode,
    )


def _charged(
    price: Mapping[str, Any], billed_in: str | None
) -> tuple[str | None, int | None, Decimal | None]:
    """The currency and unit amount an item is charged in, whole and exact (a price in
    fractions of the minor unit has only the exact one). A price in several currencies
    shows its default one on the item; a subscription in another is charged that
    currency's amount, in `currency_options` only when expanded (webhooks do not expand
    it): otherwise the amount is unknown (None), never the default currency's."""
    shown = text(price.get("currency"))
    if billed_in is not None and shown is not None and shown != billed_in:
        option = mapping(mapping(price.get("currency_options")).get(billed_in))
        amount = integer(option.get("unit_amount"))
        return billed_in, amount, exact_decimal(option.get("unit_amount_decimal"), amount)
    amount = integer(price.get("unit_amount"))
    exact = price.get("unit_amount_decimal")
    if amount is None and exact is None:  # a legacy plan's names for them
        amount, exact = integer(price.get("amount")), price.get("amount_decimal")
    return shown or billed_in, amount, exact_decimal(exact, amount)
