"""`to_record` sets a frozen Record's slots directly: the result must be the same Record
the dataclass's own constructor builds, and as frozen."""

from __future__ import annotations

import dataclasses

import pytest
from aiokafka.structs import ConsumerRecord

from projectors.base import Record, to_record


def _message(value: bytes | None) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="stripe.events",
        partition=3,
        offset=41,
        timestamp=1_764_000_000_123,
        timestamp_type=0,
        key=b"in_1",
        value=value,
        checksum=None,
        serialized_key_size=4,
        serialized_value_size=2,
        headers=(("stripe-event-id", b"evt_1"), ("stripe-livemode", b"false")),
    )


@pytest.mark.parametrize("value", [b"{}", None])
def test_to_record_is_the_record_the_constructor_builds(value: bytes | None) -> None:
    record = to_record(_message(value))
    expected = Record(
        topic="stripe.events",
        partition=3,
        offset=41,
        key=b"in_1",
        value=value if value is not None else b"",
        headers={"stripe-event-id": b"evt_1", "stripe-livemode": b"false"},
        timestamp_ms=1_764_000_000_123,
    )
    assert record == expected
    assert repr(record) == repr(expected)
    assert record.header("stripe-event-id") == "evt_1"
    assert dataclasses.replace(record, offset=42).offset == 42
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.offset = 42  # type: ignore[misc]
