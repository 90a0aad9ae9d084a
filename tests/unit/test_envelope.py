"""The envelope check: Stripe events pass (snapshot and thin); anything else is refused."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.envelope import (
    EnvelopeError,
    SnapshotEvent,
    ThinEvent,
    envelope_json_schema,
    parse_event,
    validate_event,
)

# Shapes from Stripe's own examples (fixtures-latest.json `event`, and the thin-event notes).
SNAPSHOT: dict[str, Any] = {
    "api_version": "2025-10-29.clover",
    "created": 1764064800,
    "data": {
        "object": {
            "id": "in_1Pgc6tB7WZ01zgkWu9fdqL6I",
            "object": "invoice",
            "amount_due": 1000,
            "currency": "usd",
            "customer": "cus_QXg1o8vcGmoR32",
            "status": "open",
        },
        "previous_attributes": {"status": "draft"},
    },
    "id": "evt_1Pgc76B7WZ01zgkWwyRHS12y",
    "livemode": False,
    "object": "event",
    "pending_webhooks": 1,
    "request": {"id": None, "idempotency_key": None},
    "type": "invoice.finalized",
}
THIN: dict[str, Any] = {
    "id": "evt_test_65R9Ijk8X1ZyQk2Wx8yRo3Nn6kq16PmlD2mtIdJ1wLk",
    "object": "v2.core.event",
    "type": "v1.billing.meter.error_report_triggered",
    "created": "2026-11-25T10:00:00.123Z",
    "livemode": False,
    "context": "acct_1Nv0FGQ9RKHgCVdK",
    "related_object": {
        "id": "mtr_test_61R9Ijk8X1ZyQk2Wx8yRo3Nn",
        "type": "billing.meter",
        "url": "/v1/billing/meters/mtr_test_61R9Ijk8X1ZyQk2Wx8yRo3Nn",
    },
}


def encoded(event: dict[str, Any], **changes: Any) -> bytes:
    return json.dumps({**event, **changes}, indent=2).encode()


@pytest.mark.parametrize("event", [SNAPSHOT, THIN])
def test_stripe_events_pass_and_come_back_as_parsed(event: dict[str, Any]) -> None:
    assert parse_event(encoded(event)) == event


@pytest.mark.parametrize(
    "created", [1764064800, "2026-11-25T10:00:00Z", "2026-11-25T10:00:00.123456+01:00"]
)
def test_both_forms_of_created_are_accepted_on_both_kinds(created: int | str) -> None:
    for event in (SNAPSHOT, THIN):
        assert parse_event(encoded(event, created=created))["created"] == created


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "invalid_json"),
        (b"{", "invalid_json"),
        (b"\xff\xfe{}", "invalid_json"),
        (b'"evt_1"', "not_an_event"),
        (b"[]", "not_an_event"),
        (encoded(SNAPSHOT, id="in_1Pgc6tB7WZ01zgkWu9fdqL6I"), "not_an_event"),
        (encoded(SNAPSHOT, id=7), "not_an_event"),
        (encoded(SNAPSHOT, object="invoice"), "not_an_event"),
        (encoded(SNAPSHOT, type=""), "not_an_event"),
        (encoded(SNAPSHOT, type=None), "not_an_event"),
        (encoded(SNAPSHOT, created=True), "not_an_event"),
        (encoded(SNAPSHOT, created=1.5), "not_an_event"),
        (encoded(THIN, created="2026-11-25"), "not_an_event"),
        (encoded(THIN, created="2026-11-25T10:00:00"), "not_an_event"),
        (encoded(THIN, created="soon"), "not_an_event"),
    ],
)
def test_non_events_are_refused_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(EnvelopeError) as caught:
        parse_event(body)
    assert caught.value.reason == reason


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.just("evt_1"),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["id", "object", "type", "created"]), inner, max_size=4)
    ),
    max_leaves=8,
)


@given(JSON_VALUES.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=64))
def test_any_input_is_an_event_or_an_envelope_error(body: bytes) -> None:
    outcome: dict[str, Any] | str
    try:
        outcome = parse_event(body)
    except EnvelopeError as exc:
        outcome = exc.reason
    if isinstance(outcome, str):
        assert outcome in {"invalid_json", "not_an_event"}
    else:
        assert outcome["id"].startswith("evt_")
        assert outcome["object"] in {"event", "v2.core.event"}


def test_models_read_both_kinds() -> None:
    snapshot = validate_event(encoded(SNAPSHOT))
    assert isinstance(snapshot, SnapshotEvent)
    assert snapshot.data is not None
    assert snapshot.data.object["id"] == "in_1Pgc6tB7WZ01zgkWu9fdqL6I"
    thin = validate_event(encoded(THIN))
    assert isinstance(thin, ThinEvent)
    assert thin.created == datetime(2026, 11, 25, 10, 0, 0, 123000, tzinfo=UTC)
    assert thin.context == "acct_1Nv0FGQ9RKHgCVdK"
    assert thin.related_object is not None
    assert thin.related_object.type == "billing.meter"


def test_json_schema_describes_both_kinds() -> None:
    schema = envelope_json_schema()
    assert schema["$schema"].endswith("2020-12/schema")
    assert set(schema["discriminator"]["mapping"]) == {"event", "v2.core.event"}
    json.dumps(schema)  # serialisable as it is


CREATED = [
    1764064800,
    "2026-11-25T10:00:00.123Z",
    "2026-11-25T10:00:00+01:00",
    "2026-11-25t10:00:00.123z",  # RFC 3339 lets T and Z be lower-case
    "2026-11-25T10:00:00+0000",  # fromisoformat takes these; RFC 3339 (and the schema) not
    "2026-11-25T10:00+00:00",
    "2026-11-25T10:00:00,123Z",
    "2026-W48-3T10:00:00Z",
    "1764064800",  # digits as a string
    1764064800.0,
    1764064800.5,
    "2026-11-25",  # a date alone
    "2026-11-25T10:00:00",  # no offset
    True,
    2**64 - 1,
    2**64,  # beyond 64 bits, the receiver's JSON parser reads a float
    -(2**63) - 1,
]
OTHER = [
    {"data": None},  # a snapshot without its object: the receiver logs it
    {"request": "req_123"},  # the string form of API versions before 2017-05-25
    {"livemode": None},
]


@pytest.mark.parametrize("created", CREATED, ids=repr)
@pytest.mark.parametrize("kind", [SNAPSHOT, THIN], ids=["snapshot", "thin"])
def test_the_models_take_a_created_exactly_when_the_receiver_does(
    kind: dict[str, Any], created: Any
) -> None:
    """One envelope, two layers: the models (and the exported schema) must not refuse what
    is on the log, nor describe as an event what the receiver would have refused."""
    assert_layers_agree({**kind, "created": created})
    if isinstance(
        created, str
    ):  # the exported schema's pattern, as a JSON Schema validator reads it
        patterns = _created_patterns(envelope_json_schema())
        assert patterns
        took = _receiver_takes({**kind, "created": created})
        assert all(bool(re.search(p, created)) == took for p in patterns), created


def _created_patterns(schema: Any) -> list[str]:
    """Every `pattern` stated for a string `created` in the exported schema."""
    found: list[str] = []
    if isinstance(schema, dict):
        for name, value in schema.items():
            if name == "created":
                found += [v["pattern"] for v in value.get("anyOf", [value]) if "pattern" in v]
            found += _created_patterns(value)
    elif isinstance(schema, list):
        for value in schema:
            found += _created_patterns(value)
    return found


def _receiver_takes(event: dict[str, Any]) -> bool:
    try:
        parse_event(json.dumps(event).encode())
    except EnvelopeError:
        return False
    return True


@pytest.mark.parametrize("change", OTHER, ids=repr)
def test_the_models_take_what_the_receiver_logs(change: dict[str, Any]) -> None:
    assert_layers_agree({**SNAPSHOT, **change})


# Every field the models type, by kind, as a path into the event.
TYPED = {
    "snapshot": [
        ("livemode",),
        ("api_version",),
        ("account",),
        ("pending_webhooks",),
        ("request",),
        ("request", "id"),
        ("request", "idempotency_key"),
        ("data",),
        ("data", "object"),
        ("data", "previous_attributes"),
    ],
    "thin": [
        ("livemode",),
        ("context",),
        ("related_object",),
        ("related_object", "id"),
        ("related_object", "type"),
        ("related_object", "url"),
        ("reason",),
        ("reason", "type"),
        ("reason", "request"),
        ("reason", "request", "id"),
        ("data",),
    ],
}
# A value of every JSON type, and the lax readings pydantic would make of some of them.
ANY_VALUE: list[Any] = [
    None,
    True,
    False,
    0,
    3,
    2**70,
    1.5,
    "",
    "req_1",
    "true",
    "3",
    [],
    ["x"],
    {},
]
ABSENT = object()
# A thin event's `reason`, as Stripe sends it for one caused by an API request.
REASON = {"type": "request", "request": {"id": "req_v2abc", "idempotency_key": "k-1"}}


def _with(event: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any] | None:
    """A copy of `event` with the field at `path` set (or removed, for ABSENT); None when
    a parent on the path is not an object."""
    copy: dict[str, Any] = json.loads(json.dumps(event))
    parent: Any = copy
    for name in path[:-1]:
        parent = parent.get(name)
        if not isinstance(parent, dict):
            return None
    if value is ABSENT:
        parent.pop(path[-1], None)
    else:
        parent[path[-1]] = value
    return copy


@pytest.mark.parametrize(
    "value", [*ANY_VALUE, ABSENT], ids=lambda v: "absent" if v is ABSENT else repr(v)
)
@pytest.mark.parametrize(
    ("kind", "path"),
    [("snapshot", path) for path in TYPED["snapshot"]] + [("thin", path) for path in TYPED["thin"]],
    ids=lambda x: ".".join(x) if isinstance(x, tuple) else x,
)
def test_the_receiver_refuses_a_typed_field_exactly_when_the_models_do(
    kind: str, path: tuple[str, ...], value: Any
) -> None:
    """A body signed with the secret but shaped unlike Stripe's (`"account": 42`,
    `"livemode": "true"`, a `related_object` without its `url`) was logged, and then
    refused by every consumer validating against the exported schema: now 400."""
    base = SNAPSHOT if kind == "snapshot" else {**THIN, "reason": REASON, "data": {"x": 1}}
    event = _with(base, path, value)
    if event is not None:
        assert_layers_agree(event)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"account": 42}, "account"),
        ({"livemode": "true"}, "livemode"),
        ({"data": {"previous_attributes": {}}}, "data"),
        ({"request": {"id": 5}}, "request"),
    ],
)
def test_a_mistyped_field_is_named_in_the_refusal(change: dict[str, Any], field: str) -> None:
    with pytest.raises(EnvelopeError) as refused:
        parse_event(json.dumps({**SNAPSHOT, **change}).encode())
    assert refused.value.reason == "not_an_event"
    assert f"`{field}`" in str(refused.value)


def assert_layers_agree(event: dict[str, Any]) -> None:
    assert_body_layers_agree(json.dumps(event).encode(), event)


def assert_body_layers_agree(body: bytes, event: Any = None) -> None:
    try:
        parse_event(body)
        receiver = True
    except EnvelopeError:
        receiver = False
    try:
        validate_event(body)
        model = True
    except ValidationError:
        model = False
    shown = event if event is not None else body[:200]
    assert model == receiver, f"receiver {'took' if receiver else 'refused'} {shown!r}"


@pytest.mark.parametrize("depth", [150, 199, 200, 201, 1000, 1023, 1100])
def test_the_models_take_a_deep_body_exactly_when_the_receiver_does(depth: int) -> None:
    # pydantic's own JSON parser stops at 200 levels, orjson (the receiver's) at 1024.
    inner = b"[" * (depth - 3) + b"]" * (depth - 3)  # in the event, data and object
    body = json.dumps({**SNAPSHOT, "data": {"object": {"id": "in_1", "a": "x"}}}).encode()
    body = body.replace(b'"a": "x"', b'"a": ' + inner)
    assert_body_layers_agree(body)


def test_a_body_that_is_not_json_fails_validation_as_pydantic_says() -> None:
    with pytest.raises(ValidationError) as refused:
        validate_event(b'{"id": "evt_1", ')
    assert refused.value.errors()[0]["type"] == "json_invalid"
