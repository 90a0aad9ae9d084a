"""Streams of realistic Stripe events (shapes of API version 2025-10-29, ~2-3 KB each),
produced to a topic in the receiver's record format (`ingest/record.py`)."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from ingest.record import LogRecord, build_record

API_VERSION = "2025-10-29.clover"
BASE_TIME = 1_764_000_000  # 2025-11-24T16:00:00Z


@dataclass(frozen=True)
class StreamEvent:
    """One delivery: the body as Stripe sent it, and its parsed form."""

    body: bytes
    event: dict[str, Any]


def _id(prefix: str, rng: random.Random, n: int = 24) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return prefix + "".join(rng.choice(alphabet) for _ in range(n))


def subscription(sub_id: str, customer: str, created: int, status: str) -> dict[str, Any]:
    """A subscription in the current shape (periods on the items)."""
    item = {
        "id": f"si_{sub_id[4:18]}",
        "object": "subscription_item",
        "created": created,
        "discounts": [],
        "metadata": {},
        "quantity": 1,
        "subscription": sub_id,
        "tax_rates": [],
        "billing_thresholds": None,
        "current_period_start": created,
        "current_period_end": created + 2_592_000,
        "price": {
            "id": "price_1PgafmB7WZ01zgkW6dKueIc5",
            "object": "price",
            "active": True,
            "billing_scheme": "per_unit",
            "created": 1721948530,
            "currency": "usd",
            "livemode": False,
            "lookup_key": None,
            "metadata": {},
            "nickname": None,
            "product": "prod_QXg1hqf4jFNsqG",
            "tax_behavior": "unspecified",
            "recurring": {
                "interval": "month",
                "interval_count": 1,
                "meter": None,
                "usage_type": "licensed",
                "trial_period_days": None,
            },
            "tiers_mode": None,
            "transform_quantity": None,
            "type": "recurring",
            "unit_amount": 2000,
            "unit_amount_decimal": "2000",
        },
    }
    return {
        "id": sub_id,
        "object": "subscription",
        "application": None,
        "application_fee_percent": None,
        "automatic_tax": {"enabled": False, "liability": None, "disabled_reason": None},
        "billing_cycle_anchor": created,
        "billing_cycle_anchor_config": None,
        "billing_mode": {"type": "classic"},
        "cancel_at": None,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "cancellation_details": {"comment": None, "feedback": None, "reason": None},
        "collection_method": "charge_automatically",
        "created": created,
        "currency": "usd",
        "customer": customer,
        "days_until_due": None,
        "default_payment_method": None,
        "default_source": None,
        "default_tax_rates": [],
        "description": None,
        "discounts": [],
        "ended_at": None,
        "invoice_settings": {"account_tax_ids": None, "issuer": {"type": "self"}},
        "items": {
            "object": "list",
            "data": [item],
            "has_more": False,
            "url": f"/v1/subscription_items?subscription={sub_id}",
        },
        "latest_invoice": None,
        "livemode": False,
        "metadata": {"plan": "pro"},
        "next_pending_invoice_item_invoice": None,
        "on_behalf_of": None,
        "pause_collection": None,
        "payment_settings": {
            "payment_method_options": None,
            "payment_method_types": None,
            "save_default_payment_method": "off",
        },
        "pending_invoice_item_interval": None,
        "pending_setup_intent": None,
        "pending_update": None,
        "schedule": None,
        "start_date": created,
        "status": status,
        "test_clock": None,
        "transfer_data": None,
        "trial_end": None,
        "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
        "trial_start": None,
    }


def invoice(inv_id: str, customer: str, sub_id: str, created: int, status: str) -> dict[str, Any]:
    """An invoice in the current shape (`parent.subscription_details`)."""
    paid = status == "paid"
    return {
        "id": inv_id,
        "object": "invoice",
        "account_country": "US",
        "account_name": "Acme",
        "amount_due": 2000,
        "amount_paid": 2000 if paid else 0,
        "amount_remaining": 0 if paid else 2000,
        "amount_shipping": 0,
        "attempt_count": 1,
        "attempted": True,
        "auto_advance": not paid,
        "billing_reason": "subscription_cycle",
        "collection_method": "charge_automatically",
        "created": created,
        "currency": "usd",
        "customer": customer,
        "customer_email": "jenny.rosen@example.com",
        "customer_name": "Jenny Rosen",
        "default_payment_method": None,
        "description": None,
        "discounts": [],
        "due_date": None,
        "effective_at": created,
        "ending_balance": 0,
        "hosted_invoice_url": f"https://invoice.stripe.com/i/acct_1/{inv_id}",
        "issuer": {"type": "self"},
        "livemode": False,
        "metadata": {},
        "next_payment_attempt": None if paid else created + 86_400,
        "number": "ACME-0001",
        "lines": {
            "object": "list",
            "has_more": False,
            "url": f"/v1/invoices/{inv_id}/lines",
            "data": [
                {
                    "id": f"il_{inv_id[3:17]}",
                    "object": "line_item",
                    "amount": 2000,
                    "currency": "usd",
                    "description": "1 × Pro (at $20.00 / month)",
                    "discount_amounts": [],
                    "discountable": True,
                    "discounts": [],
                    "invoice": inv_id,
                    "livemode": False,
                    "metadata": {},
                    "period": {"start": created, "end": created + 2_592_000},
                    "quantity": 1,
                    "parent": {
                        "type": "subscription_item_details",
                        "subscription_item_details": {
                            "subscription": sub_id,
                            "proration": False,
                            "subscription_item": f"si_{sub_id[4:18]}",
                        },
                    },
                    "pricing": {
                        "type": "price_details",
                        "price_details": {
                            "price": "price_1PgafmB7WZ01zgkW6dKueIc5",
                            "product": "prod_QXg1hqf4jFNsqG",
                        },
                        "unit_amount_decimal": "2000",
                    },
                }
            ],
        },
        "parent": {
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {"metadata": {}, "subscription": sub_id},
        },
        "period_end": created,
        "period_start": created - 2_592_000,
        "status": status,
        "status_transitions": {
            "finalized_at": created,
            "marked_uncollectible_at": None,
            "paid_at": created + 60 if paid else None,
            "voided_at": None,
        },
        "subtotal": 2000,
        "total": 2000,
        "total_excluding_tax": 2000,
        "webhooks_delivered_at": created,
    }


def event(
    obj: dict[str, Any],
    event_type: str,
    created: int,
    rng: random.Random,
    account: str | None = None,
) -> StreamEvent:
    """A snapshot event around `obj`, serialized the way Stripe sends it."""
    body: dict[str, Any] = {
        "id": _id("evt_", rng),
        "object": "event",
        "api_version": API_VERSION,
        "created": created,
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": _id("req_", rng, 14), "idempotency_key": None},
        "type": event_type,
    }
    if account is not None:
        body["account"] = account
    return StreamEvent(orjson.dumps(body, option=orjson.OPT_INDENT_2), body)


def thin_event(related_id: str, event_type: str, created: int, rng: random.Random) -> StreamEvent:
    """A thin (v2) event: RFC 3339 `created`, a `related_object`, no `data`."""
    body = {
        "id": _id("evt_", rng),
        "object": "v2.core.event",
        "type": event_type,
        "created": datetime.fromtimestamp(created, UTC).isoformat().replace("+00:00", "Z"),
        "livemode": False,
        "related_object": {
            "id": related_id,
            "type": "billing.meter",
            "url": f"/v1/billing/meters/{related_id}",
        },
    }
    return StreamEvent(orjson.dumps(body), body)


def stream(count: int, *, seed: int = 7, thin_every: int = 50) -> list[StreamEvent]:
    """`count` events of a few hundred customers: subscriptions changing, invoices paid,
    Connect accounts, an occasional thin event and redelivered duplicate."""
    rng = random.Random(seed)
    customers = [(_id("cus_", rng, 14), _id("sub_", rng)) for _ in range(max(1, count // 8))]
    events: list[StreamEvent] = []
    while len(events) < count:
        n = len(events)
        created = BASE_TIME + n
        customer, sub_id = rng.choice(customers)
        if n % thin_every == thin_every - 1:
            events.append(
                thin_event(
                    _id("mtr_", rng, 16), "v1.billing.meter.error_report_triggered", created, rng
                )
            )
        elif n % 37 == 36 and events:
            events.append(rng.choice(events[-20:]))  # Stripe delivers at least once
        elif n % 2:
            status = rng.choice(["active", "past_due", "canceled"])
            events.append(
                event(
                    subscription(sub_id, customer, created, status),
                    "customer.subscription.updated",
                    created,
                    rng,
                )
            )
        else:
            account = "acct_1Nv0FGQ9RKHgCVdK" if n % 5 == 0 else None
            events.append(
                event(
                    invoice(_id("in_", rng), customer, sub_id, created, "paid"),
                    "invoice.paid",
                    created,
                    rng,
                    account,
                )
            )
    return events


def records(events: Iterable[StreamEvent], *, endpoint: str = "platform") -> list[LogRecord]:
    """The log records the receiver would append for these deliveries."""
    at = datetime.fromtimestamp(BASE_TIME, UTC)
    return [build_record(e.body, e.event, endpoint=endpoint, received_at=at) for e in events]


async def produce(bootstrap: str, topic: str, items: Sequence[LogRecord | bytes]) -> None:
    """Append records (or raw values, e.g. poison) to `topic` and wait for every ack."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_request_size=8 * 1024 * 1024,
    )
    await producer.start()
    try:
        futures = []
        for item in items:
            if isinstance(item, LogRecord):
                futures.append(
                    await producer.send(
                        topic,
                        value=item.value,
                        key=item.key,
                        headers=item.headers,
                        timestamp_ms=item.timestamp_ms,
                    )
                )
            else:
                futures.append(await producer.send(topic, value=item, key=b"poison"))
        for future in futures:
            await future
    finally:
        await producer.stop()
