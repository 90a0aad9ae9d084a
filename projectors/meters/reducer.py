"""The meters projection's decisions (pure): which changes one record makes.

Two topics feed it: the app's usage facts (no `stripe-event-type` header; the value is a
usage fact) and the Stripe event log (meters, subscriptions, invoices, and the thin meter
error reports, which the runner hydrates with their `data` before they get here).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import orjson

from ingest.record import HEADER_EVENT_TYPE
from projectors.base import PoisonRecord, Record
from projectors.meters.changes import Change, ErrorReport, FactRejected, MeterSeen, UsageReported
from projectors.meters.stripe_objects import (
    credit_note_changes,
    id_of,
    invoice_changes,
    subscription_changes,
    unix_seconds,
)
from schemas.usage import (
    MAX_IDENTIFIER,
    MAX_TIMESTAMP,
    UsageAction,
    UsageFactError,
    parse_usage_fact,
)

METER_EVENTS = frozenset(
    {
        "billing.meter.created",
        "billing.meter.updated",
        "billing.meter.deactivated",
        "billing.meter.reactivated",
    }
)
ERROR_REPORTS = frozenset(
    {"v1.billing.meter.error_report_triggered", "v1.billing.meter.no_meter_found"}
)
AGGREGATIONS = frozenset({"sum", "count", "last"})
TIME_WINDOWS = frozenset({"hour", "day"})
# The plain decimal strings well-formed producers send (ASCII digits only: `\d` would take
# other scripts' digits, which only the model may judge).
PLAIN_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
ACTIONS = {None: False, "report": False, "cancel": True}


def reduce(record: Record) -> list[Change]:
    """The changes one record makes; PoisonRecord when it can never be applied."""
    if record.header(HEADER_EVENT_TYPE) is None:
        # An app's usage fact, or a Stripe event written without the receiver's headers
        # (a dead letter sent again by hand with a console producer).
        received = record.timestamp_ms // 1000
        fast = _plain_usage_change(record.value, received)
        if fast is not None:
            return [fast]
        found = _stripe_event(record)
        if found is None:
            return [_modelled_usage_change(record.value, received)]
        event = found
    else:
        event = record.json()
    event_type = str(event.get("type") or record.header(HEADER_EVENT_TYPE))
    event_id = id_of(event.get("id"))
    created = unix_seconds(event.get("created"))
    if event_id is None or created is None:
        raise PoisonRecord(f"{event_type} event without an id or a readable `created`")
    if event_type in ERROR_REPORTS:
        return error_report_changes(event, event_type, event_id, created)
    obj = event.get("data", {}).get("object") if isinstance(event.get("data"), Mapping) else None
    if not isinstance(obj, Mapping):
        return []
    if event_type in METER_EVENTS:
        return [meter_change(obj, event_id, created)]
    if event_type.startswith("customer.subscription.") and obj.get("object") == "subscription":
        return subscription_changes(obj, event_id, created)
    if event_type.startswith("invoice.") and obj.get("object") == "invoice":
        return invoice_changes(obj, event_type, event_id, created)
    if event_type.startswith("credit_note.") and obj.get("object") == "credit_note":
        return credit_note_changes(obj, event_type, event_id, created)
    return []


def _stripe_event(record: Record) -> dict[str, Any] | None:
    """The record's body if it is a Stripe event (an `evt_` id and a `type`), else None."""
    try:
        body = record.json()
    except PoisonRecord:
        return None
    event_id = body.get("id")
    is_event = (
        body.get("object") in ("event", "v2.core.event")
        and type(event_id) is str
        and event_id.startswith("evt_")
        and type(body.get("type")) is str
    )
    return body if is_event else None


def usage_change(value: bytes, received: int | None = None) -> UsageReported:
    """A usage-fact record (that reached the log at `received`) as a change; PoisonRecord
    with the validation error otherwise."""
    fast = _plain_usage_change(value, received)
    return fast if fast is not None else _modelled_usage_change(value, received)


def _modelled_usage_change(value: bytes, received: int | None) -> UsageReported:
    """A fact not in the plain shape `_plain_usage_change` takes: the model judges it."""
    try:
        fact = parse_usage_fact(value)
    except UsageFactError as exc:
        raise PoisonRecord(str(exc)) from None
    return UsageReported(
        identifier=fact.identifier,
        event_name=fact.event_name,
        customer=fact.stripe_customer_id,
        value=fact.value,
        timestamp=fact.timestamp,
        cancel=fact.action is UsageAction.CANCEL,
        received=received,
    )


def _plain_usage_change(value: bytes, received: int | None = None) -> UsageReported | None:
    """The change of a fact in the common, plainly valid shape, without the model (it cost
    more than the rest of the reducer); None for anything else, which the model judges and
    explains. Accepts only what the model accepts, with the same resulting values."""
    try:
        fact = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if type(fact) is not dict:
        return None
    identifier = fact.get("identifier")
    event_name = fact.get("event_name")
    customer = fact.get("stripe_customer_id")
    raw = fact.get("value")
    timestamp = fact.get("timestamp")
    action = fact.get("action")
    if (
        type(identifier) is not str
        or not 0 < len(identifier) <= MAX_IDENTIFIER
        or type(event_name) is not str
        or not 0 < len(event_name) <= 100
        or type(customer) is not str
        or not customer
        or type(raw) is not str
        or len(raw) > 100  # the model decides whether it fits a numeric column
        or PLAIN_DECIMAL.fullmatch(raw) is None
        or type(timestamp) is not int
        or not 0 <= timestamp <= MAX_TIMESTAMP
        or (action is not None and type(action) is not str)
        or action not in ACTIONS
        or ("action" in fact and action is None)  # an explicit null: the model says why
    ):
        return None
    return UsageReported(
        identifier=identifier,
        event_name=event_name,
        customer=customer,
        value=Decimal(raw),
        timestamp=timestamp,
        cancel=ACTIONS[action],
        received=received,
    )


def meter_change(meter: Mapping[str, Any], event_id: str, created: int) -> MeterSeen:
    """A `billing.meter` snapshot; its formula is `default_aggregation.formula`."""
    meter_id, event_name = id_of(meter.get("id")), meter.get("event_name")
    if meter_id is None or not isinstance(event_name, str) or not event_name:
        raise PoisonRecord(f"billing.meter in {event_id} has no id or event_name")
    aggregation = meter.get("default_aggregation")
    formula = aggregation.get("formula") if isinstance(aggregation, Mapping) else None
    if not isinstance(formula, str) or formula not in AGGREGATIONS:
        raise PoisonRecord(
            f"meter {meter_id} in {event_id}: aggregation {formula!r} is not sum, count or last"
        )
    display = meter.get("display_name")
    window = meter.get("event_time_window")
    return MeterSeen(
        id=meter_id,
        event_name=event_name,
        display_name=display if isinstance(display, str) else None,
        status=str(meter.get("status") or "active"),
        aggregation=str(formula),
        event_id=event_id,
        created=created,
        event_time_window=window if isinstance(window, str) and window in TIME_WINDOWS else None,
    )


def _list(value: Any) -> list[Any]:
    """`value` if it is a JSON array, else no items (a report with a mangled list still
    counts its errors; only its samples are lost)."""
    return value if isinstance(value, list) else []


def error_report_changes(
    event: Mapping[str, Any], event_type: str, event_id: str, created: int
) -> list[Change]:
    """A hydrated meter error report: each sampled identifier is rejected; counts are kept."""
    data = event.get("data")
    if not isinstance(data, Mapping):
        raise PoisonRecord(
            f"thin event {event_id} ({event_type}) has no `data`: it was not hydrated from "
            f"GET /v2/core/events/{event_id}; check LATTICE_STRIPE_API_KEY and the hydrator"
        )
    reason = data.get("reason")
    if not isinstance(reason, Mapping):
        raise PoisonRecord(f"{event_type} {event_id}: `data.reason` is missing")
    changes: list[Change] = []
    sampled = 0
    counted = 0
    for error_type in _list(reason.get("error_types")):
        if not isinstance(error_type, Mapping):
            continue
        code = str(error_type.get("code") or "unknown")
        count = error_type.get("error_count")
        counted += count if isinstance(count, int) and not isinstance(count, bool) else 0
        for sample in _list(error_type.get("sample_errors")):
            if not isinstance(sample, Mapping):
                continue
            request = sample.get("request")
            identifier = id_of(request.get("identifier")) if isinstance(request, Mapping) else None
            if identifier is None:
                continue
            sampled += 1
            message = sample.get("error_message")
            changes.append(
                FactRejected(
                    identifier,
                    code,
                    message if isinstance(message, str) else None,
                    event_id,
                    created,
                )
            )
    total = reason.get("error_count")
    error_count = total if isinstance(total, int) and not isinstance(total, bool) else counted
    related = event.get("related_object")
    meter = None
    if isinstance(related, Mapping) and related.get("type") == "billing.meter":
        meter = id_of(related.get("id"))
    summary = data.get("developer_message_summary")
    changes.append(
        ErrorReport(
            event_id=event_id,
            type=event_type,
            meter=meter,
            error_count=error_count,
            sampled=sampled,
            validation_start=unix_seconds(data.get("validation_start")),
            validation_end=unix_seconds(data.get("validation_end")),
            summary=summary if isinstance(summary, str) else None,
            created=created,
        )
    )
    return changes
