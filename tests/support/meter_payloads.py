"""Payloads for the meters projection in Stripe's real shapes: meters, hydrated meter error
reports (thin events), and the app's usage facts, plus records of them as a reducer sees them.

Subscriptions and invoices come from `tests.fixtures.stripe_objects`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

from ingest.record import build_record
from projectors.base import Record
from tests.fixtures.stripe_objects import T0, event, new_id

_serial = itertools.count(1)
RECEIVED_AT = datetime.fromtimestamp(T0 + 30 * 86_400, tz=UTC)


def billing_meter(
    *,
    meter_id: str | None = None,
    event_name: str = "api_requests",
    formula: str = "sum",
    status: str = "active",
    display_name: str = "API requests",
    event_time_window: str | None = None,
) -> dict[str, Any]:
    """A `billing.meter` object (`event_time_window` `hour` or `day`: fed pre-aggregated
    usage)."""
    return {
        "id": meter_id or new_id("mtr"),
        "object": "billing.meter",
        "created": T0 - 86_400,
        "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
        "default_aggregation": {"formula": formula},
        "display_name": display_name,
        "event_name": event_name,
        "event_time_window": event_time_window,
        "livemode": False,
        "status": status,
        "status_transitions": {"deactivated_at": None},
        "updated": T0 - 86_400,
        "value_settings": {"event_payload_key": "value"},
    }


def meter_event(
    meter: dict[str, Any], *, created: int = T0 - 86_400, kind: str = "created"
) -> dict[str, Any]:
    """A `billing.meter.<kind>` snapshot event."""
    return event(f"billing.meter.{kind}", meter, created=created)


def _rfc3339(unix: int) -> str:
    return (
        datetime.fromtimestamp(unix, tz=UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def error_report(
    *,
    identifiers: Sequence[str],
    meter: str | None,
    code: str = "customer_not_found",
    extra_errors: int = 0,
    at: int = T0 + 3_600,
    hydrated: bool = True,
) -> dict[str, Any]:
    """A meter error report; `meter=None` gives `v1.billing.meter.no_meter_found`.

    `hydrated=False` is the thin event as delivered; True adds the `data` that
    GET /v2/core/events/{id} returns. `extra_errors` are counted but not sampled.
    """
    kind = "error_report_triggered" if meter is not None else "no_meter_found"
    evt: dict[str, Any] = {
        "id": f"evt_test_65R{next(_serial):020d}",
        "object": "v2.core.event",
        "type": f"v1.billing.meter.{kind}",
        "created": _rfc3339(at),
        "livemode": False,
        "reason": {
            "type": "request",
            "request": {"id": "req_v2Xz3TMiT0hD", "idempotency_key": None},
        },
    }
    if meter is not None:
        evt["related_object"] = {
            "id": meter,
            "type": "billing.meter",
            "url": f"/v1/billing/meters/{meter}",
        }
    if not hydrated:
        return evt
    samples = [
        {"error_message": f"No customer found for meter event {i}", "request": {"identifier": i}}
        for i in identifiers
    ]
    count = len(identifiers) + extra_errors
    evt["data"] = {
        "developer_message_summary": f"There are {count} invalid meter events",
        "reason": {
            "error_count": count,
            "error_types": [{"code": code, "error_count": count, "sample_errors": samples}],
        },
        "validation_start": _rfc3339(at - 3_600),
        "validation_end": _rfc3339(at),
    }
    return evt


def usage_fact(
    identifier: str,
    customer: str,
    value: str | int | float | Decimal,
    *,
    event_name: str = "api_requests",
    timestamp: int = T0 + 86_400,
    action: str | None = None,
) -> dict[str, Any]:
    """A usage fact as the app writes it on `usage.reported`."""
    fact: dict[str, Any] = {
        "identifier": identifier,
        "event_name": event_name,
        "stripe_customer_id": customer,
        "value": str(value) if isinstance(value, Decimal) else value,
        "timestamp": timestamp,
    }
    if action is not None:
        fact["action"] = action
    return fact


def usage_record(fact: dict[str, Any], *, topic: str = "usage.reported", offset: int = 0) -> Record:
    """A usage fact as a reducer receives it: key = customer id, no Stripe headers."""
    return Record(
        topic=topic,
        partition=0,
        offset=offset,
        key=str(fact.get("stripe_customer_id", "")).encode(),
        value=orjson.dumps(fact),
        headers={},
        timestamp_ms=int(fact.get("timestamp", 0)) * 1000,
    )


def stripe_record(evt: dict[str, Any], *, offset: int = 0) -> Record:
    """A Stripe event (snapshot or thin) as the receiver logs it and a reducer receives it."""
    log = build_record(orjson.dumps(evt), evt, endpoint="platform", received_at=RECEIVED_AT)
    return Record(
        topic="stripe.events",
        partition=0,
        offset=offset,
        key=log.key,
        value=log.value,
        headers=dict(log.headers),
        timestamp_ms=log.timestamp_ms,
    )
