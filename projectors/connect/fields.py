"""Pure readers of a Stripe event's fields: typed values or a PoisonRecord naming the field.

Parsed JSON objects are dicts: checking `dict`, not the `Mapping` ABC, is measurably
cheaper on the hot path.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from projectors.base import PoisonRecord


class Event:
    """A snapshot event's envelope: id, created, the Connect account, livemode, object."""

    __slots__ = ("account", "created", "id", "livemode", "obj")

    def __init__(self, event: Mapping[str, Any]) -> None:
        event_id = event.get("id")
        if not isinstance(event_id, str) or not event_id:
            raise PoisonRecord("event has no id")
        self.id = event_id
        self.created = moment(event.get("created"), f"event {event_id} created")
        data = event.get("data")
        obj = data.get("object") if isinstance(data, dict) else None
        if not isinstance(obj, dict):
            raise PoisonRecord(f"event {event_id} has no data.object (a thin event?)")
        self.obj: Mapping[str, Any] = obj
        # The body's `account` alone, never the `stripe-account` header: the receiver also
        # fills that from `context`, which an Organization's endpoint sets on every event,
        # the platform's own included (its transfers would be booked as debits of itself).
        account = event.get("account")
        self.account = account if isinstance(account, str) and account else None
        self.livemode = event.get("livemode") is True


def moment(value: Any, what: str) -> datetime:
    """Unix seconds as a UTC datetime; PoisonRecord naming `what` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise PoisonRecord(f"{what} is not Unix seconds: {value!r}")
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise PoisonRecord(f"{what} is out of range: {value!r}") from None


def opt_moment(value: Any, what: str) -> datetime | None:
    """Like `moment`, with None for null."""
    return None if value is None else moment(value, what)


def ref(value: Any) -> str | None:
    """An expandable field: an id, an expanded object's id, or None."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, dict):
        inner = value.get("id")
        return inner if isinstance(inner, str) and inner else None
    return None


def text(obj: Mapping[str, Any], field: str) -> str:
    """A required non-empty string field."""
    value = obj.get(field)
    if not isinstance(value, str) or not value:
        raise PoisonRecord(f"{obj.get('object')} {obj.get('id')!r} has no {field}")
    return value


def opt_text(obj: Mapping[str, Any], field: str) -> str | None:
    """A string field, or None when absent, null or empty."""
    value = obj.get(field)
    return value if isinstance(value, str) and value else None


def integer(obj: Mapping[str, Any], field: str) -> int:
    """A required integer field (booleans are not integers here)."""
    value = obj.get(field)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PoisonRecord(f"{obj.get('object')} {obj.get('id')!r}: {field} is not an integer")
    return value


def opt_integer(obj: Mapping[str, Any], field: str) -> int | None:
    """An integer field, or None."""
    value = obj.get(field)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def opt_bool(obj: Mapping[str, Any], field: str) -> bool | None:
    """A boolean field, or None."""
    value = obj.get(field)
    return value if isinstance(value, bool) else None


def list_data(obj: Mapping[str, Any], field: str) -> list[Mapping[str, Any]]:
    """The objects of an embedded list (`{"object": "list", "data": [...]}`)."""
    listing = obj.get(field)
    data = listing.get("data") if isinstance(listing, dict) else None
    return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []


def strings(value: Any) -> tuple[str, ...]:
    """A JSON array of strings as a sorted tuple (empty for anything else)."""
    return tuple(sorted(v for v in value if isinstance(v, str))) if isinstance(value, list) else ()
