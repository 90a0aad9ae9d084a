"""The `events` reducer (pure): one log record in, one index row out.

Reads snapshot events (`created` in Unix seconds, `data.object.id`, `account`) and thin
events (`created` in RFC 3339, `related_object.id`, `context`) alike.

The hot path decodes only the fields the index reads (`fields.py`), several times cheaper
than building the whole body as Python objects; any record it does not take as plainly
well-formed goes through the full parse below, which decides exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ingest.record import account_of
from projectors.base import PoisonRecord, Record
from projectors.events.fields import IndexFields, decode_fields
from schemas.envelope import rfc3339_moment


@dataclass(slots=True)
class EventRow:
    """One row of `projections.events` (times as Unix seconds). A dataclass because orjson
    serializes those natively: the store ships a batch as one JSON document. Not frozen:
    a frozen dataclass pays a setattr call per field, per event, on the hot path."""

    id: str
    type: str
    created: float
    account: str | None
    livemode: bool
    api_version: str | None
    object_id: str | None
    topic: str
    partition: int
    kafka_offset: int
    received_at: float


def _seconds(value: Any) -> float:
    if isinstance(value, bool):
        raise PoisonRecord("`created` is a boolean")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        moment = rfc3339_moment(value)
        if moment is None:
            raise PoisonRecord(f"`created` is not RFC 3339: {value[:40]!r}")
        return moment.timestamp()
    raise PoisonRecord("`created` is missing")


def _object_id(event: dict[str, Any]) -> str | None:
    for holder, field in ((event.get("data"), "object"), (event, "related_object")):
        if isinstance(holder, dict):
            obj = holder.get(field)
            if isinstance(obj, dict) and isinstance(obj.get("id"), str):
                return str(obj["id"])
    return None


def reduce(record: Record) -> list[EventRow]:
    """The index row of one record; PoisonRecord when it is not a Stripe event."""
    fields = decode_fields(record.value)
    if fields is not None:
        row = _fast_row(record, fields)
        if row is not None:
            return [row]
    return [_row(record, record.json())]


def _fast_row(record: Record, f: IndexFields) -> EventRow | None:
    """The row from the decoded fields; None (take the full parse) unless the event is
    plainly well-formed, so every refusal and its message come from `_row`."""
    event_id, event_type, created = f.id, f.type, f.created
    if event_id is None or not event_id.startswith("evt_") or not event_type:
        return None
    if created is None:
        return None
    obj = f.data.object if f.data is not None else None
    object_id = obj.id if obj is not None else None
    if object_id is None and f.related_object is not None:
        object_id = f.related_object.id
    return EventRow(
        event_id,
        event_type,
        _seconds(created),
        f.account or f.context or None,
        f.livemode is True,
        f.api_version,
        object_id,
        record.topic,
        record.partition,
        record.offset,
        record.timestamp_ms / 1000.0,
    )


def _row(record: Record, event: dict[str, Any]) -> EventRow:
    event_id, event_type = event.get("id"), event.get("type")
    if not isinstance(event_id, str) or not event_id.startswith("evt_"):
        raise PoisonRecord("not a Stripe event: `id` is missing or not an evt_ id")
    if not isinstance(event_type, str) or not event_type:
        raise PoisonRecord(f"{event_id}: `type` is missing")
    api_version = event.get("api_version")
    return EventRow(
        id=event_id,
        type=event_type,
        created=_seconds(event.get("created")),
        account=account_of(event),
        livemode=event.get("livemode") is True,
        api_version=api_version if isinstance(api_version, str) else None,
        object_id=_object_id(event),
        topic=record.topic,
        partition=record.partition,
        kafka_offset=record.offset,
        # The Kafka timestamp is the time received (the log's contract), the same
        # instant as the lattice-received-at header, without parsing text per record.
        received_at=record.timestamp_ms / 1000.0,
    )
