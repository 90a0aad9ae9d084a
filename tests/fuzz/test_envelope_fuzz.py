"""Hostile bodies against the envelope parser: it returns a Stripe event or raises
`EnvelopeError`, nothing else; what it returns always meets the envelope contract, and
reads the same as Python's own JSON parser would, and the models of `schemas/` take
exactly what it takes (so no two readers of the log disagree)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.envelope import EnvelopeError, parse_event, validate_event
from tests.fixtures.stripe_objects import event, invoice, subscription
from tests.fuzz.conftest import fuzz_settings
from tests.fuzz.strategies import json_values, malformed_json, mutated, with_duplicate_keys

REASONS = {"invalid_json", "not_an_event"}


def check(body: bytes) -> dict[str, Any] | None:
    """Parse `body`; assert the outcome is one of the two allowed ones."""
    reason: str | None
    try:
        got = parse_event(body)
    except EnvelopeError as exc:
        reason = exc.reason
    else:
        reason = None
    # The models (and so the exported schema) take exactly what the receiver logs.
    try:
        validate_event(body)
        modelled = True
    except ValidationError:
        modelled = False
    assert modelled == (reason is None), f"receiver {reason or 'took it'}, models {modelled}"
    if reason is not None:
        assert reason in REASONS
        return None
    assert isinstance(got, dict)
    assert isinstance(got["id"], str)
    assert got["id"].startswith("evt_")
    assert got["object"] in ("event", "v2.core.event")
    assert isinstance(got["type"], str)
    assert got["type"]
    assert isinstance(got["created"], int | str)
    assert not isinstance(got["created"], bool)
    reference = json.loads(body, parse_int=_int_as_orjson_reads_it)
    assert got == reference, "orjson and the json module read the body differently"
    return got


def _int_as_orjson_reads_it(text: str) -> int | float:
    # orjson reads integers beyond 64 bits as floats (json keeps them exact): a known,
    # documented difference, so the reference reads them the same way.
    value = int(text)
    return value if -(2**63) <= value < 2**64 else float(value)


def _samples() -> list[dict[str, Any]]:
    return [
        event("customer.subscription.updated", subscription(era="legacy"), era="legacy"),
        event("invoice.paid", invoice(era="basil", subscription="sub_1")),
        {
            "id": "evt_test_65R4",
            "object": "v2.core.event",
            "type": "v1.billing.meter.error_report_triggered",
            "created": "2026-11-25T10:00:00.123Z",
            "livemode": False,
            "context": "acct_1",
            "related_object": {"id": "mtr_1", "type": "billing.meter", "url": "/v1/x"},
        },
    ]


@fuzz_settings(1000)
@given(body=st.one_of(malformed_json(), st.binary(max_size=300)))
def test_malformed_bodies_are_refused(body: bytes, cases: Counter[str]) -> None:
    """The body, and the body cut short in the middle (a dropped connection's remains)."""
    cases["envelope: malformed bytes"] += 2
    check(body)
    check(body[: len(body) // 2])


@fuzz_settings(600)
@given(value=json_values)
def test_any_json_value_is_an_event_or_refused(value: Any, cases: Counter[str]) -> None:
    """Any value as the whole body, and as an otherwise valid event's `data`."""
    cases["envelope: arbitrary JSON"] += 2
    check(json.dumps(value).encode())
    check(json.dumps({**_samples()[0], "data": value}).encode())


@fuzz_settings(1000)
@given(data=st.data(), which=st.integers(0, 2))
def test_real_events_with_fields_changed(
    data: st.DataObject, which: int, cases: Counter[str]
) -> None:
    cases["envelope: mutated real events"] += 1
    sample = _samples()[which]
    check(json.dumps(data.draw(mutated(sample))).encode())


@fuzz_settings(200)
@given(key=st.sampled_from(["id", "object", "type", "created"]), second=json_values)
def test_duplicate_keys_read_as_the_last_one(key: str, second: Any, cases: Counter[str]) -> None:
    """A key given twice: the parser keeps the last value, as `json` does, so the value the
    record's headers are built from is the one every consumer of the log will read."""
    cases["envelope: duplicate keys"] += 1
    got = check(with_duplicate_keys(_samples()[0], key, second))
    if got is not None:
        assert got[key] == second


# A second value each key can take, so that the body stays an event and the last-one rule
# is checked every time (random values are mostly refused, which checks only the refusal).
VALID_SECOND = {
    "id": st.from_regex(r"evt_[A-Za-z0-9]{1,24}", fullmatch=True),
    "object": st.sampled_from(["event", "v2.core.event"]),
    "type": st.text(min_size=1, max_size=20),
    "created": st.integers(0, 2**40),
}


@fuzz_settings(200)
@given(data=st.data(), key=st.sampled_from(sorted(VALID_SECOND)))
def test_a_valid_value_given_twice_reads_as_the_last_one(
    data: st.DataObject, key: str, cases: Counter[str]
) -> None:
    cases["envelope: duplicate keys"] += 1
    second = data.draw(VALID_SECOND[key])
    got = check(with_duplicate_keys(_samples()[0], key, second))
    assert got is not None
    assert got[key] == second
