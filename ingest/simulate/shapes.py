"""Stripe objects and event envelopes in the shapes of two API eras (pure).

Field names and nesting follow Stripe's own fixtures: before 2025-03-31 (`acacia`) the
billing period sits on the subscription and an invoice names its subscription and line
prices directly; from basil on (`clover`) periods sit on subscription items, an invoice
points to its subscription under `parent` and a line's price under `pricing`.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

OLD_API = "2025-02-24.acacia"
NEW_API = "2025-10-29.clover"
API_VERSIONS = (OLD_API, NEW_API)

_ALPHABET = string.ascii_letters + string.digits

Json = dict[str, Any]


class Ids:
    """Stripe-looking ids drawn from the simulation's seeded random generator."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def new(self, prefix: str, length: int = 16) -> str:
        """A fresh id such as `sub_1aB2c3...`."""
        return prefix + "_1" + "".join(self._rng.choices(_ALPHABET, k=length))


MIXED = "mixed"


def version_at(mode: str, at: int, upgraded_at: int) -> str:
    """The API version an endpoint renders an event of `at` in: `mode` itself, or for
    MIXED the old era before `upgraded_at` and the new from then on."""
    if mode != MIXED:
        return mode
    return OLD_API if at < upgraded_at else NEW_API


def is_new_era(api_version: str) -> bool:
    """True for API versions from 2025-03-31 (basil) on."""
    return api_version >= "2025-03-31"


@dataclass(frozen=True, slots=True)
class Price:
    """A price of the simulated catalogue."""

    id: str
    product: str
    currency: str
    unit_amount: int | None
    unit_amount_decimal: str
    interval: str
    meter: str | None = None

    def to_json(self) -> Json:
        """The price object as Stripe embeds it in items and lines."""
        return {
            "id": self.id,
            "object": "price",
            "active": True,
            "billing_scheme": "per_unit",
            "created": 1759276800,
            "currency": self.currency,
            "livemode": False,
            "lookup_key": None,
            "metadata": {},
            "nickname": None,
            "product": self.product,
            "recurring": {
                "interval": self.interval,
                "interval_count": 1,
                "meter": self.meter,
                "usage_type": "metered" if self.meter else "licensed",
                "trial_period_days": None,
            },
            "tax_behavior": "unspecified",
            "tiers_mode": None,
            "transform_quantity": None,
            "type": "recurring",
            "unit_amount": self.unit_amount,
            "unit_amount_decimal": self.unit_amount_decimal,
        }


def event(
    event_id: str,
    kind: str,
    created: int,
    obj: Json,
    api_version: str,
    *,
    account: str | None = None,
    previous: Json | None = None,
) -> Json:
    """A snapshot event (`"object": "event"`) carrying `obj` as `data.object`."""
    body: Json = {"id": event_id, "object": "event"}
    if account is not None:
        body["account"] = account
    data: Json = {"object": obj}
    if previous is not None:
        data["previous_attributes"] = previous
    body.update(
        {
            "api_version": api_version,
            "created": created,
            "data": data,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": kind,
        }
    )
    return body


def rfc3339(unix: int) -> str:
    """Unix seconds as the RFC 3339 text thin events carry."""
    return (
        datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def thin_event(event_id: str, kind: str, created: int, meter_id: str) -> Json:
    """A thin (v2) event about a meter, as an event destination delivers it."""
    return {
        "id": event_id,
        "object": "v2.core.event",
        "type": kind,
        "created": rfc3339(created),
        "livemode": False,
        "related_object": {
            "id": meter_id,
            "type": "billing.meter",
            "url": f"/v1/billing/meters/{meter_id}",
        },
        "reason": None,
    }


def customer(cid: str, created: int, email: str, name: str, *, delinquent: bool) -> Json:
    """A customer object."""
    return {
        "id": cid,
        "object": "customer",
        "address": None,
        "balance": 0,
        "created": created,
        "currency": "usd",
        "default_source": None,
        "delinquent": delinquent,
        "description": None,
        "discount": None,
        "email": email,
        "invoice_prefix": cid[-8:].upper(),
        "invoice_settings": {
            "custom_fields": None,
            "default_payment_method": None,
            "footer": None,
            "rendering_options": None,
        },
        "livemode": False,
        "metadata": {},
        "name": name,
        "next_invoice_sequence": 1,
        "phone": None,
        "preferred_locales": [],
        "shipping": None,
        "tax_exempt": "none",
        "test_clock": None,
    }


def meter(meter_id: str, created: int, event_name: str, display_name: str) -> Json:
    """A `billing.meter` object summing the `value` of its events."""
    return {
        "id": meter_id,
        "object": "billing.meter",
        "created": created,
        "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
        "default_aggregation": {"formula": "sum"},
        "display_name": display_name,
        "event_name": event_name,
        "event_time_window": None,
        "livemode": False,
        "status": "active",
        "status_transitions": {"deactivated_at": None},
        "updated": created,
        "value_settings": {"event_payload_key": "value"},
    }
