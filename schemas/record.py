"""The event log's record contract (topic `stripe.events`): the headers every accepted
delivery carries, as DESIGN.md states them. `ingest/record.py` builds records to it (the
value is the request body byte for byte, `stripe_event.schema.json`; the key is the object
id); readers in other languages check headers against `log_record_headers.schema.json`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

HEADER_EVENT_ID = "stripe-event-id"
HEADER_EVENT_TYPE = "stripe-event-type"
HEADER_ACCOUNT = "stripe-account"
HEADER_LIVEMODE = "stripe-livemode"
HEADER_API_VERSION = "stripe-api-version"
HEADER_ENDPOINT = "lattice-endpoint"
HEADER_RECEIVED_AT = "lattice-received-at"
HEADER_SOURCE = "lattice-source"

# UTC with milliseconds and `Z`: 2026-11-25T10:00:00.123Z
RECEIVED_AT = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$"


class RecordHeaders(BaseModel):
    """The headers of one record on the event log (values are UTF-8 text)."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="LogRecordHeaders")

    event_id: str = Field(alias=HEADER_EVENT_ID, pattern=r"^evt_", description="the event's id")
    event_type: str = Field(alias=HEADER_EVENT_TYPE, min_length=1, description="its `type`")
    account: str | None = Field(
        default=None,
        alias=HEADER_ACCOUNT,
        min_length=1,
        description="the Connect account (`account`, or `context` on thin events); absent "
        "otherwise",
    )
    livemode: Literal["true", "false"] = Field(alias=HEADER_LIVEMODE)
    api_version: str | None = Field(
        default=None,
        alias=HEADER_API_VERSION,
        description="the event's api_version; absent when it has none (thin events)",
    )
    endpoint: str = Field(
        alias=HEADER_ENDPOINT, min_length=1, description="the receiver's endpoint name"
    )
    received_at: str = Field(
        alias=HEADER_RECEIVED_AT, pattern=RECEIVED_AT, description="when it was received"
    )
    source: Literal["backfill"] | None = Field(
        default=None, alias=HEADER_SOURCE, description="`backfill` for appended by backfill"
    )


def read_headers(headers: Iterable[tuple[str, bytes]]) -> RecordHeaders:
    """A record's Kafka headers as the contract's model (pydantic.ValidationError if not)."""
    return RecordHeaders.model_validate({name: value.decode() for name, value in headers})


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a record's headers, by header name."""
    schema = RecordHeaders.model_json_schema(mode="validation", by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://lattice.dev/schemas/log_record_headers.schema.json"
    return schema
