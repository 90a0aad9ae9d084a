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
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import InitErrorDetails

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
    wrong = _mistyped(event)
    if wrong is not None:
        raise EnvelopeError("not_an_event", f"`{wrong}` is not what Stripe sends there")
    return event


def _optional(value: Any, kind: type | tuple[type, ...]) -> bool:
    return value is None or (isinstance(value, kind) and not isinstance(value, bool))


def _request_ok(request: Any) -> bool:
    return request is None or (
        isinstance(request, dict)
        and _optional(request.get("id"), str)
        and _optional(request.get("idempotency_key"), str)
    )


def _mistyped(event: dict[str, Any]) -> str | None:
    """The first field Stripe types (as the models below do) that holds another type, or
    None: a record on the log always validates against the models and the exported schema.
    A field absent or null is never wrong; a real event's fields pass in a few lookups."""
    livemode = event.get("livemode")
    if livemode is not None and not isinstance(livemode, bool):
        return "livemode"
    if event["object"] == SNAPSHOT:
        if not _optional(event.get("api_version"), str):
            return "api_version"
        if not _optional(event.get("account"), str):
            return "account"
        if not _optional(event.get("pending_webhooks"), int):
            return "pending_webhooks"
        request = event.get("request")
        if not isinstance(request, str) and not _request_ok(request):
            return "request"
        data = event.get("data")
        if data is not None and not (
            isinstance(data, dict)
            and isinstance(data.get("object"), dict)
            and _optional(data.get("previous_attributes"), dict)
        ):
            return "data"
        return None
    if not _optional(event.get("context"), str):
        return "context"
    related = event.get("related_object")
    if related is not None and not (
        isinstance(related, dict)
        and all(isinstance(related.get(name), str) for name in ("id", "type", "url"))
    ):
        return "related_object"
    reason = event.get("reason")
    if reason is not None and not (
        isinstance(reason, dict)
        and isinstance(reason.get("type"), str)
        and _request_ok(reason.get("request"))
    ):
        return "reason"
    if not _optional(event.get("data"), dict):
        return "data"
    return None


# An integer as the receiver's JSON parser reads one: beyond 64 bits, orjson reads a float.
JsonInt = Annotated[StrictInt, Field(ge=-(2**63), lt=2**64)]


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

    id: StrictStr | None = None
    idempotency_key: StrictStr | None = None


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
    created: JsonInt | Rfc3339 = Field(
        description="Unix seconds (as Stripe sends it); an RFC 3339 string is accepted too"
    )
    # Null allowed where Stripe sends null; strict types (no "true" for true, no "3" for 3),
    # exactly as the receiver checks them (`_mistyped`), so what is on the log validates.
    livemode: StrictBool | None = False
    api_version: StrictStr | None = None
    account: StrictStr | None = Field(default=None, description="the Connect account, if any")
    pending_webhooks: JsonInt | None = None
    request: EventRequest | str | None = Field(
        default=None, description="an object; a request id string before API 2017-05-25"
    )
    data: EventData | None = None


class RelatedObject(BaseModel):
    """What a thin event is about; fetch it from `url` for its current state."""

    model_config = ConfigDict(extra="allow")

    id: StrictStr
    type: StrictStr
    url: StrictStr


class ThinEventReason(BaseModel):
    """Why a thin event happened: `type` `request` names the API request that caused it."""

    model_config = ConfigDict(extra="allow")

    type: StrictStr
    request: EventRequest | None = None


class ThinEvent(BaseModel):
    """A thin (v2) event: a pointer to its object; `data` only when fetched from the API."""

    model_config = ConfigDict(extra="allow")

    id: Annotated[str, Field(pattern=r"^evt_")]
    object: Literal["v2.core.event"]
    type: str = Field(min_length=1)
    created: Rfc3339 | JsonInt = Field(description="RFC 3339, e.g. 2026-11-25T10:00:00.123Z")
    livemode: StrictBool | None = False
    context: StrictStr | None = Field(default=None, description="the Connect account, if any")
    related_object: RelatedObject | None = None
    reason: ThinEventReason | None = None
    data: dict[str, Any] | None = Field(
        default=None, description="only in the full event, from GET /v2/core/events/{id}"
    )


Envelope = Annotated[SnapshotEvent | ThinEvent, Field(discriminator="object")]
ENVELOPE = TypeAdapter[SnapshotEvent | ThinEvent](Envelope)


def validate_event(body: bytes | str) -> SnapshotEvent | ThinEvent:
    """Parse and validate a full envelope into its model (raises pydantic.ValidationError).

    Parsed by orjson, as the receiver parses it, so the two agree on every body: pydantic's
    own JSON parser stops at 200 levels of nesting where orjson goes to 1024, and the
    same JSON read by both (duplicate keys: the last; integers past 64 bits: floats)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValidationError.from_exception_data(
            "StripeEvent",
            [InitErrorDetails(type="json_invalid", loc=(), input=body, ctx={"error": str(exc)})],
        ) from None
    return ENVELOPE.validate_python(parsed)


def envelope_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a Stripe event as it sits on the event log."""
    schema = ENVELOPE.json_schema(mode="validation")
    schema["title"] = "StripeEvent"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://lattice.dev/schemas/stripe_event.schema.json"
    return schema
