"""Thin (v2) events in Stripe's real shape: what a destination delivers, and the full
event `GET /v2/core/events/{id}` answers (see shared/stripe/README.md)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

_serial = itertools.count(1)
T0 = datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC)


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def meter_error_report(
    *,
    meter: str = "mtr_test_61Q8nQMqIFK9fRQmr41CMAXJrFdZ5MnA",
    identifiers: tuple[str, ...] = ("usage-0001",),
    code: str = "meter_event_no_customer_defined",
    context: str | None = None,
    at: datetime = T0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A `v1.billing.meter.error_report_triggered` event: (thin as delivered, full as fetched)."""
    event_id = f"evt_test_65R{next(_serial):020d}"
    thin: dict[str, Any] = {
        "id": event_id,
        "object": "v2.core.event",
        "type": "v1.billing.meter.error_report_triggered",
        "created": _rfc3339(at),
        "livemode": False,
        "related_object": {
            "id": meter,
            "type": "billing.meter",
            "url": f"/v1/billing/meters/{meter}",
        },
        "reason": {
            "type": "request",
            "request": {"id": "req_v2Xz3TMiT0hD", "idempotency_key": None},
        },
    }
    if context is not None:
        thin["context"] = context
    samples = [
        {
            "error_message": f"Customer mapping not found for meter event {ident}",
            "request": {"identifier": ident},
        }
        for ident in identifiers
    ]
    full = dict(thin)
    full["data"] = {
        "developer_message_summary": f"There are {len(identifiers)} invalid meter events",
        "reason": {
            "error_count": len(identifiers),
            "error_types": [
                {"code": code, "error_count": len(identifiers), "sample_errors": samples}
            ],
        },
        "validation_start": _rfc3339(at - timedelta(minutes=5)),
        "validation_end": _rfc3339(at),
    }
    return thin, full
