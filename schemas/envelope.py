"""The Stripe event envelope: snapshot events and thin (v2) events.

Two layers. `parse_event` is the receiver's hot path: one `orjson` parse and a handful of
type checks, returning the plain dict (a pydantic model per request would cost more than
the rest of the request). The pydantic models describe the same envelope for consumers
that want types, and export its JSON Schema for producers and readers in other languages.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    TypeAdapter,
    WithJsonSchema,
)

EVENT_ID_PREFIX = "evt_"
SNAPSHOT = "event"
THIN = "v2.core.event"


class EnvelopeError(ValueError):
    """The body is not a Stripe event; `reason` is a short machine-readable name."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# The shape the exported schema states; `rfc3339_moment` holds every reader to it, as
# fromisoformat alone also takes `+0000`, a time without seconds or a week date.
RFC3339_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}"
    r"(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
_RFC3339 = re.compile(RFC3339_PATTERN)


def rfc3339_moment(value: str) -> datetime | None:
    """The aware moment an RFC 3339 timestamp names (`T`/`Z` in either case, as RFC 3339
    allows), or None. Every reader of `created` uses this, so a record the receiver took
    is never refused downstream (fromisoformat on 3.11 refuses a lower-case `z`)."""
    if not _RFC3339.fullmatch(value):
        return None
    try:
        return datetime.fromisoformat(value.upper())
    except ValueError:  # the right shape, but no such day or hour (2026-02-30, 25:00)
        return None


def _is_rfc3339(value: str) -> bool:
    return rfc3339_moment(value) is not None


def parse_event(body: bytes) -> dict[str, Any]:
    """Parse `body` once and check it is a Stripe event; raise `EnvelopeError` if not.

    A Stripe event is a JSON object with an `id` starting `evt_`, an `object` of `event`
    (snapshot) or `v2.core.event` (thin), a non-empty string `type`, and a `created` that
    is Unix seconds (snapshot events) or an RFC 3339 string (thin events); either form
    is accepted on either kind.
    """
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise EnvelopeError("invalid_json", "body is not valid UTF-8 JSON") from None
    if not isinstance(event, dict):
        raise EnvelopeError("not_an_event", "body is not a JSON object")
    event_id = event.get("id")
    if not isinstance(event_id, str) or not event_id.startswith(EVENT_ID_PREFIX):
        raise EnvelopeError("not_an_event", "`id` is not a string starting with evt_")
    if event.get("object") not in (SNAPSHOT, THIN):
        raise EnvelopeError("not_an_event", "`object` is neither `event` nor `v2.core.event`")
    event_type = event.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise EnvelopeError("not_an_event", "`type` is not a non-empty string")
    created = event.get("created")
    if isinstance(created, bool) or not (
        isinstance(created, int) or (isinstance(created, str) and _is_rfc3339(created))
    ):
        raise EnvelopeError(
            "not_an_event", "`created` is neither Unix seconds nor an RFC 3339 timestamp"
        )
    return event


def _rfc3339_text(value: Any) -> Any:
    moment = rfc3339_moment(value) if isinstance(value, str) else None
    if moment is None:
        raise ValueError("neither Unix seconds nor an RFC 3339 timestamp with a time and offset")
    return moment


# `created` as the receiver takes it (see `parse_event`), not pydantic's lax datetime,
# which would also take "1764064800", 1764064800.5, a date alone or a time without offset.
Rfc3339 = Annotated[
    AwareDatetime,
    BeforeValidator(_rfc3339_text),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "pattern": RFC3339_PATTERN,
        }
    ),
]


class EventRequest(BaseModel):
    """The API request that caused a snapshot event (null ids for automatic events)."""

    model_config = ConfigDict(extra="allow")

    id: str | None = None
    idempotency_key: str | None = None


class EventData(BaseModel):
    """The object as it was when the event happened, and what changed (`*.updated`)."""

    model_config = ConfigDict(extra="allow")

    object: dict[str, Any]
    previous_attributes: dict[str, Any] | None = None


class SnapshotEvent(BaseModel):
    """A classic (v1) Stripe event carrying a snapshot of its object in `data.object`."""

    model_config = ConfigDict(extra="allow")

    id: Annotated[str, Field(pattern=r"^evt_")]
    object: Literal["event"]
    type: str = Field(min_length=1)
    created: StrictInt | Rfc3339 = Field(
        description="Unix seconds (as Stripe sends it); an RFC 3339 string is accepted too"
    )
    # Null allowed where Stripe sends null. The receiver checks only id, object, type and
    # created (exactly as these models do); the other fields are typed as Stripe sends
    # them, which a record signed with the secret but shaped otherwise may not be.
    livemode: bool | None = False
    api_version: str | None = None
    account: str | None = Field(default=None, description="the Connect account, if any")
    pending_webhooks: int | None = None
    request: EventRequest | str | None = Field(
        default=None, description="an object; a request id string before API 2017-05-25"
    )
    data: EventData | None = None


class RelatedObject(BaseModel):
    """What a thin event is about; fetch it from `url` for its current state."""

    model_config = ConfigDict(extra="allow")

    id: str
    type: str
    url: str


class ThinEventReason(BaseModel):
    """Why a thin event happened: `type` `request` names the API request that caused it."""

    model_config = ConfigDict(extra="allow")

    type: str
    request: EventRequest | None = None


class ThinEvent(BaseModel):
    """A thin (v2) event: a pointer to its object; `data` only when fetched from the API."""

    model_config = ConfigDict(extra="allow")

    id: Annotated[str, Field(pattern=r"^evt_")]
    object: Literal["v2.core.event"]
    type: str = Field(min_length=1)
    created: Rfc3339 | StrictInt = Field(description="RFC 3339, e.g. 2026-11-25T10:00:00.123Z")
    livemode: bool | None = False
    context: str | None = Field(default=None, description="the Connect account, if any")
    related_object: RelatedObject | None = None
    reason: ThinEventReason | None = None
    data: dict[str, Any] | None = Field(
        default=None, description="only in the full event, from GET /v2/core/events/{id}"
    )


Envelope = Annotated[SnapshotEvent | ThinEvent, Field(discriminator="object")]
ENVELOPE = TypeAdapter[SnapshotEvent | ThinEvent](Envelope)


def validate_event(body: bytes | str) -> SnapshotEvent | ThinEvent:
    """Parse and validate a full envelope into its model (raises pydantic.ValidationError)."""
    return ENVELOPE.validate_json(body)


def envelope_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a Stripe event as it sits on the event log."""
    schema = ENVELOPE.json_schema(mode="validation")
    schema["title"] = "StripeEvent"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://lattice.dev/schemas/stripe_event.schema.json"
    return schema
