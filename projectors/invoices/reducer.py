"""Invoices, their lines and invoice payments, from snapshot events (pure).

Both API shapes are read: the subscription at `invoice.subscription` (before 2025-03-31)
or `invoice.parent.subscription_details.subscription`; a line's price at `price` or at
`pricing.price_details.price`; a line's subscription at `subscription` or under `parent`.
`invoice.upcoming` previews an invoice that does not exist (it has no id): no change.
A basil line names its price by id only: the price's meter comes from the events that
show the price whole (`prices.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from projectors.base import Record
from projectors.invoices.prices import PRICE_EVENTS, PriceMeter, price_meters
from projectors.price_meter import meter_of_price
from projectors.subscriptions.snapshot import (
    EMPTY,
    LIVE,
    TERMINAL,
    Event,
    declared_elsewhere,
    exact_decimal,
    integer,
    line_id,
    list_data,
    mapping,
    object_id,
    progress,
    read_event,
    ref,
    text,
    version,
)

INVOICE_EVENTS = frozenset(
    f"invoice.{suffix}"
    for suffix in (
        "created",
        "finalized",
        "updated",
        "paid",
        "payment_succeeded",
        "payment_failed",
        "payment_action_required",
        "voided",
        "marked_uncollectible",
        "deleted",
        "finalization_failed",
        "overdue",
        "will_be_due",
    )
)
PAYMENT_EVENTS = frozenset({"invoice_payment.paid"})
HANDLED = INVOICE_EVENTS | PAYMENT_EVENTS | PRICE_EVENTS

# Lifecycle order within one second; `uncollectible` may still be paid (or voided).
INVOICE_RANK: Mapping[str, int] = {"draft": 0, "open": 1, "uncollectible": 2, "paid": 3, "void": 3}
TERMINAL_INVOICE = frozenset({"paid", "void"})
PAYMENT_RANK: Mapping[str, int] = {"open": 0, "paid": 1, "canceled": 1}


@dataclass(slots=True)
class Line:
    """One invoice line row."""

    id: str
    subscription: str | None
    subscription_item: str | None
    price: str | None
    product: str | None
    meter: str | None
    quantity: int | None
    # Stripe's `quantity_decimal` where the line has one (`quantity` is then cut to a
    # whole number), else `quantity`.
    quantity_decimal: Decimal | None
    amount: int | None
    currency: str | None
    proration: bool | None
    period_start: int | None
    period_end: int | None
    # The price object was in the line (before basil): `meter` is known, None or not. Not
    # a column, and no part of what the line says (so not compared).
    price_shown: bool = field(default=False, compare=False)


@dataclass(slots=True)
class InvoiceSnapshot:
    """An invoice as one event shows it, with the lines it carries."""

    id: str
    version: str
    event_id: str
    event_created: int
    customer: str | None
    account: str | None
    subscription: str | None
    status: str
    deleted: bool
    billing_reason: str | None
    collection_method: str | None
    currency: str | None
    total: int | None
    amount_due: int | None
    amount_paid: int | None
    amount_remaining: int | None
    attempt_count: int | None
    next_payment_attempt: int | None
    due_date: int | None
    period_start: int | None
    period_end: int | None
    paid_at: int | None
    finalized_at: int | None
    voided_at: int | None
    number: str | None
    created: int | None
    livemode: bool
    lines_complete: bool
    lines: tuple[Line, ...]
    # `attempt_count` when the event is `invoice.payment_failed` (at least 1: a first
    # payment confirmed by the customer shows 0), else 0: the store keeps the greatest
    # any event of the invoice showed, whichever came first.
    failed_attempts: int = 0


@dataclass(slots=True)
class PaymentSnapshot:
    """An invoice payment (`invoice_payment.paid`)."""

    id: str
    version: str
    event_id: str
    event_created: int
    invoice: str | None
    status: str | None
    amount_paid: int | None
    amount_requested: int | None
    currency: str | None
    paid_at: int | None
    is_default: bool | None
    account: str | None
    livemode: bool


Change = InvoiceSnapshot | PaymentSnapshot | PriceMeter


def reduce(record: Record) -> list[Change]:
    """The change one record makes: an invoice or invoice payment snapshot, or nothing."""
    if declared_elsewhere(record, HANDLED):
        return []
    event = read_event(record)
    if event is None or event.type == "invoice.upcoming":
        return []
    if event.type in INVOICE_EVENTS:
        snapshot = invoice_snapshot(event)
        links = {ln.price: ln.meter for ln in snapshot.lines if ln.price and ln.meter}
        return [
            snapshot,
            *(PriceMeter(price, meter, event.id, event.created) for price, meter in links.items()),
        ]
    if event.type in PAYMENT_EVENTS:
        return [payment_snapshot(event)]
    if event.type in PRICE_EVENTS:
        return list(price_meters(event))
    return []


def invoice_subscription(obj: Mapping[str, Any]) -> str | None:
    """The invoice's subscription in either API shape."""
    legacy = ref(obj.get("subscription"))
    if legacy is not None:
        return legacy
    details = mapping(mapping(obj.get("parent")).get("subscription_details"))
    return ref(details.get("subscription"))


def invoice_snapshot(event: Event) -> InvoiceSnapshot:
    """Read an invoice snapshot; a deleted (draft) invoice or a paid or void one is final."""
    obj = event.object
    status = text(obj.get("status")) or "draft"
    deleted = event.type == "invoice.deleted" or obj.get("deleted") is True
    transitions = mapping(obj.get("status_transitions"))
    lines_list = mapping(obj.get("lines"))
    lines = {}
    for raw in list_data(lines_list):
        if type(raw) is dict and (found := line_id(raw)) is not None:
            lines[found] = _line(raw, found)
    terminal = deleted or status in TERMINAL_INVOICE
    return InvoiceSnapshot(
        id=object_id(event, "in_"),
        version=version(
            TERMINAL if terminal else LIVE,
            event.created,
            INVOICE_RANK.get(status, 0),
            progress(event, integer(obj.get("attempt_count")) or 0),
            event.id,
            event.api_version,
        ),
        event_id=event.id,
        event_created=event.created,
        customer=ref(obj.get("customer")),
        account=event.account,
        subscription=invoice_subscription(obj),
        status=status,
        deleted=deleted,
        billing_reason=text(obj.get("billing_reason")),
        collection_method=text(obj.get("collection_method")),
        currency=text(obj.get("currency")),
        total=integer(obj.get("total")),
        amount_due=integer(obj.get("amount_due")),
        amount_paid=integer(obj.get("amount_paid")),
        amount_remaining=integer(obj.get("amount_remaining")),
        attempt_count=integer(obj.get("attempt_count")),
        next_payment_attempt=integer(obj.get("next_payment_attempt")),
        due_date=integer(obj.get("due_date")),
        period_start=integer(obj.get("period_start")),
        period_end=integer(obj.get("period_end")),
        paid_at=integer(transitions.get("paid_at")),
        finalized_at=integer(transitions.get("finalized_at")),
        voided_at=integer(transitions.get("voided_at")),
        number=text(obj.get("number")),
        created=integer(obj.get("created")),
        livemode=obj.get("livemode") is True or event.livemode,
        lines_complete=lines_list.get("has_more") is not True,
        lines=tuple(lines.values()),
        failed_attempts=(
            max(integer(obj.get("attempt_count")) or 0, 1)
            if event.type == "invoice.payment_failed"
            else 0
        ),
    )


def _line(raw: Mapping[str, Any], found: str) -> Line:
    parent = mapping(raw.get("parent"))
    # Since basil `parent.type` names the line's origin; read only the details it names.
    kind = parent.get("type")
    details = mapping(parent.get(kind)) if type(kind) is str else EMPTY
    price_details = mapping(mapping(raw.get("pricing")).get("price_details"))
    # Before basil `price` is the expanded price; since, only its id (unless expanded).
    price_field = raw.get("price") if raw.get("price") is not None else price_details.get("price")
    price = mapping(price_field)
    period = mapping(raw.get("period"))
    proration = raw.get("proration", details.get("proration"))
    quantity = integer(raw.get("quantity"))
    return Line(
        id=found,
        subscription=ref(raw.get("subscription")) or ref(details.get("subscription")),
        subscription_item=ref(raw.get("subscription_item"))
        or ref(details.get("subscription_item")),
        price=ref(price_field),
        product=ref(price.get("product")) or ref(price_details.get("product")),
        meter=meter_of_price(price),
        quantity=quantity,
        quantity_decimal=exact_decimal(raw.get("quantity_decimal"), quantity),
        amount=integer(raw.get("amount")),
        currency=text(raw.get("currency")),
        proration=proration if isinstance(proration, bool) else None,
        period_start=integer(period.get("start")),
        period_end=integer(period.get("end")),
        price_shown=type(price_field) is dict,
    )


def payment_snapshot(event: Event) -> PaymentSnapshot:
    """Read an invoice payment snapshot; paid and canceled payments are final."""
    obj = event.object
    status = text(obj.get("status"))
    is_default = obj.get("is_default")
    return PaymentSnapshot(
        id=object_id(event, "inpay_"),
        version=version(
            TERMINAL if status in ("paid", "canceled") else LIVE,
            event.created,
            PAYMENT_RANK.get(status or "", 0),
            progress(event),
            event.id,
            event.api_version,
        ),
        event_id=event.id,
        event_created=event.created,
        invoice=ref(obj.get("invoice")),
        status=status,
        amount_paid=integer(obj.get("amount_paid")),
        amount_requested=integer(obj.get("amount_requested")),
        currency=text(obj.get("currency")),
        paid_at=integer(mapping(obj.get("status_transitions")).get("paid_at")),
        is_default=is_default if isinstance(is_default, bool) else None,
        account=event.account,
        livemode=obj.get("livemode") is True or event.livemode,
    )
