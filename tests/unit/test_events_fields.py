"""The events reducer's hot path (decoding only the fields the index reads) decides exactly
as the full parse does: same rows for real events, same refusals for everything else."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from projectors.base import PoisonRecord, Record
from projectors.events.fields import decode_fields
from projectors.events.reducer import EventRow, _row, reduce
from tests.support.stripe_stream import stream


def _record(value: bytes, offset: int = 7) -> Record:
    return Record("stripe.events", 1, offset, b"k", value, {}, 1_764_000_000_123)


def _full(record: Record) -> list[EventRow] | str:
    """What the full parse alone decides: the row, or the refusal's message."""
    try:
        return [_row(record, record.json())]
    except PoisonRecord as exc:
        return f"poison: {exc}"


def _hot(record: Record) -> list[EventRow] | str:
    try:
        return reduce(record)
    except PoisonRecord as exc:
        return f"poison: {exc}"


def test_real_events_give_the_same_rows_by_either_path() -> None:
    events = stream(300, seed=3, thin_every=7)
    assert any(e.event["object"] == "v2.core.event" for e in events)
    for n, event in enumerate(events):
        record = _record(event.body, n)
        assert decode_fields(record.value) is not None
        assert reduce(record) == _full(record)


BASE: dict[str, Any] = {
    "id": "evt_1Pgc76B7WZ01zgkWwyRHS12y",
    "type": "invoice.paid",
    "created": 1_764_000_123,
    "livemode": True,
    "api_version": "2025-10-29.clover",
    "data": {"object": {"id": "in_1", "object": "invoice"}},
}


@pytest.mark.parametrize(
    "value",
    [
        # Malformed where the hot path only steps over: orjson refuses the whole value.
        # (Not checked there: a number out of range in a field the index does not read;
        # the receiver parses every body with orjson first, so none reaches the log.)
        orjson.dumps(BASE)[:-1] + b',"note":"caf\xe9"}',
        orjson.dumps({**BASE, "created": 1}).replace(b'"created":1', b'"created":-1e999'),
        b'{"id":"evt_1","type":"x","created":1e999}',
        b"not json",
        b"",
        b"[1, 2]",
    ],
)
def test_what_orjson_refuses_is_poison(value: bytes) -> None:
    with pytest.raises(PoisonRecord, match=r"not JSON|not a JSON object"):
        reduce(_record(value))


@pytest.mark.parametrize(
    "change",
    [
        {"id": None},
        {"id": "ch_1"},
        {"id": 5},
        {"type": ""},
        {"type": ["invoice.paid"]},
        {"created": True},
        {"created": None},
        {"created": "yesterday"},
        {"created": "2026-11-25T10:00:00.123Z"},
        {"created": "2026-11-25t10:00:00.123z"},  # RFC 3339 lets T and Z be lower-case
        {"created": 1_764_000_123.25},
        {"account": ""},
        {"account": 42, "context": "acct_1"},
        {"context": "acct_2"},
        {"livemode": "true"},
        {"livemode": None},
        {"api_version": 2025},
        {"data": "in_1"},
        {"data": {"object": "in_1"}},
        {"data": {"object": {"id": None}}, "related_object": {"id": "mtr_1"}},
        {"data": {"object": {"id": 7}}},
        {"data": None, "related_object": {"id": 9}},
        {"data": [], "related_object": {"id": "mtr_2"}},
    ],
)
def test_odd_fields_decide_as_the_full_parse(change: dict[str, Any]) -> None:
    record = _record(orjson.dumps({**BASE, **change}))
    assert _hot(record) == _full(record)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
FIELDS = st.sampled_from(
    ["id", "type", "created", "account", "context", "livemode", "api_version", "data"]
)


@given(st.dictionaries(FIELDS, JSON, max_size=4), st.dictionaries(st.text(), JSON, max_size=2))
def test_any_event_shape_decides_as_the_full_parse(
    fields: dict[str, Any], extra: dict[str, Any]
) -> None:
    record = _record(orjson.dumps({**BASE, **extra, **fields}))
    assert _hot(record) == _full(record)


def test_a_lower_case_rfc3339_created_is_indexed_not_dead_lettered() -> None:
    """The receiver takes `2026-11-25t10:00:00.123z` (RFC 3339 allows it); so must the
    index, which backfill trusts (fromisoformat alone refuses the `z` on 3.11)."""
    thin = next(e.event for e in stream(20, seed=3, thin_every=2) if "related_object" in e.event)
    value = orjson.dumps({**thin, "created": "2026-11-25t10:00:00.123z"})
    (row,) = reduce(_record(value))
    assert row.created == datetime(2026, 11, 25, 10, 0, 0, 123000, UTC).timestamp()
