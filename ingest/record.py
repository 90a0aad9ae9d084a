"""The event log's record format: key and headers of one accepted delivery (pure).

Value: the request body byte for byte. Key: the id of the object the event is about
(`data.object.id`; `related_object.id` for thin events; else the event id), so every event
of one object lands on one partition in arrival order. Headers as in DESIGN.md.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

# The header names are the contract's (`schemas/record.py`), named here too for the
# modules that build and read records.
from schemas.record import HEADER_ACCOUNT as HEADER_ACCOUNT
from schemas.record import HEADER_API_VERSION as HEADER_API_VERSION
from schemas.record import HEADER_ENDPOINT as HEADER_ENDPOINT
from schemas.record import HEADER_EVENT_ID as HEADER_EVENT_ID
from schemas.record import HEADER_EVENT_TYPE as HEADER_EVENT_TYPE
from schemas.record import HEADER_LIVEMODE as HEADER_LIVEMODE
from schemas.record import HEADER_RECEIVED_AT as HEADER_RECEIVED_AT
from schemas.record import HEADER_SOURCE as HEADER_SOURCE


class LogRecord(NamedTuple):
    """What the receiver appends to the log for one delivery (a named tuple: built once
    per delivery, and a frozen dataclass's `__init__` costs a microsecond more)."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    timestamp_ms: int


def object_id(event: Mapping[str, Any]) -> str:
    """The partition key: the event's object id, its related object's id, or its own id."""
    data = event.get("data")
    if isinstance(data, Mapping):
        obj = data.get("object")
        if isinstance(obj, Mapping) and isinstance(obj.get("id"), str) and obj["id"]:
            return str(obj["id"])
    related = event.get("related_object")
    if isinstance(related, Mapping) and isinstance(related.get("id"), str) and related["id"]:
        return str(related["id"])
    return str(event["id"])


def account_of(event: Mapping[str, Any]) -> str | None:
    """The Connect account: `account` on snapshot events, `context` on thin events."""
    for field in ("account", "context"):
        value = event.get(field)
        if isinstance(value, str) and value:
            return value
    return None


def rfc3339(moment: datetime) -> str:
    """UTC, millisecond precision, `Z` suffix: 2026-11-25T10:00:00.123Z."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@functools.lru_cache(maxsize=4)
def _utc_second(seconds: int) -> str:
    # Deliveries arrive hundreds per second: format each second once (a pure memo).
    return time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(seconds))


def rfc3339_ms(ms: int) -> str:
    """`rfc3339` of Unix milliseconds, without building a datetime (the receiver's path)."""
    seconds, millis = divmod(ms, 1000)
    return f"{_utc_second(seconds)}{millis:03d}Z"


def build_record(
    body: bytes,
    event: Mapping[str, Any],
    *,
    endpoint: str,
    received_at: datetime,
    source: str | None = None,
) -> LogRecord:
    """The record for one accepted delivery of `event` (already parsed from `body`)."""
    return _record(
        body,
        event,
        endpoint,
        rfc3339(received_at),
        int(received_at.timestamp() * 1000),
        source,
    )


def build_received(
    body: bytes, event: Mapping[str, Any], *, endpoint: str, received_ms: int
) -> LogRecord:
    """`build_record` for a delivery received at `received_ms` (Unix milliseconds): the
    header and the timestamp come from the same integer, with no datetime per request."""
    return _record(body, event, endpoint, rfc3339_ms(received_ms), received_ms, None)


def _record(
    body: bytes,
    event: Mapping[str, Any],
    endpoint: str,
    received_text: str,
    received_ms: int,
    source: str | None,
) -> LogRecord:
    headers: list[tuple[str, bytes]] = [
        (HEADER_EVENT_ID, str(event["id"]).encode()),
        (HEADER_EVENT_TYPE, str(event["type"]).encode()),
    ]
    account = account_of(event)
    if account is not None:
        headers.append((HEADER_ACCOUNT, account.encode()))
    headers.append((HEADER_LIVEMODE, b"true" if event.get("livemode") is True else b"false"))
    api_version = event.get("api_version")
    if isinstance(api_version, str) and api_version:
        headers.append((HEADER_API_VERSION, api_version.encode()))
    headers.append((HEADER_ENDPOINT, endpoint.encode()))
    headers.append((HEADER_RECEIVED_AT, received_text.encode()))
    if source is not None:
        headers.append((HEADER_SOURCE, source.encode()))
    return LogRecord(
        key=object_id(event).encode(),
        value=body,
        headers=headers,
        timestamp_ms=received_ms,
    )
