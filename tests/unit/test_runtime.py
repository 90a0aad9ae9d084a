"""Pure parts of the projector runtime: arguments, the events reducer, dead-letter
headers, thin-event detection, error classes, discovery, progress and status output."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    UnknownTopicOrPartitionError,
)

from projectors import catalog
from projectors.base import PoisonRecord, Record
from projectors.deadletter import DeadLetter, headers_for
from projectors.events.reducer import reduce
from projectors.failures import is_transient
from projectors.hydration_gate import is_thin
from projectors.progress import Progress
from projectors.status import PartitionStatus, render
from projectors.timearg import ArgumentError, parse_partition_offset, parse_time


def _record(value: bytes | dict[str, Any], **headers: str) -> Record:
    body = value if isinstance(value, bytes) else orjson.dumps(value)
    return Record(
        "stripe.events",
        2,
        41,
        b"in_1",
        body,
        {k.replace("_", "-"): v.encode() for k, v in headers.items()},
        1_764_000_000_000,
    )


SNAPSHOT: dict[str, Any] = {
    "id": "evt_1Pgc76B7WZ01zgkWwyRHS12y",
    "object": "event",
    "api_version": "2025-10-29.clover",
    "created": 1_764_000_123,
    "livemode": True,
    "account": "acct_1Nv0FGQ9RKHgCVdK",
    "type": "invoice.paid",
    "data": {"object": {"id": "in_1Pgc6tB7WZ01zgkWu9fdqL6I", "object": "invoice"}},
    "pending_webhooks": 1,
    "request": {"id": None, "idempotency_key": None},
}
THIN: dict[str, Any] = {
    "id": "evt_test_65R9Ijk8cLqbx1",
    "object": "v2.core.event",
    "type": "v1.billing.meter.error_report_triggered",
    "created": "2026-11-25T10:00:00.123Z",
    "livemode": False,
    "context": "acct_1Nv0FGQ9RKHgCVdK",
    "related_object": {
        "id": "mtr_test_61R9",
        "type": "billing.meter",
        "url": "/v1/billing/meters/mtr_test_61R9",
    },
}


def test_time_accepts_rfc3339_and_unix_seconds() -> None:
    assert parse_time("2026-11-01T00:00:00Z") == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_time("2026-11-01T01:00:00+01:00") == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_time("1793491200") == datetime.fromtimestamp(1793491200, UTC)
    # RFC 3339 lets `T` and `Z` be lower case (fromisoformat on 3.11 refuses the `z`).
    assert parse_time("2026-11-01t00:00:00z") == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_time("2026-11-01 00:00:00.5Z") == datetime(2026, 11, 1, 0, 0, 0, 500000, UTC)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("yesterday", "neither RFC 3339"),
        ("", "neither RFC 3339"),
        ("2026-11-01T00:00:00", "lacks a UTC offset"),
        ("2026-11-01", "lacks a UTC offset"),
        ("2026-11-01T00:00+00:00", "lacks seconds"),  # RFC 3339 has seconds
        ("2026-11-01T00:00z", "lacks seconds"),
        ("2026-11-01T00:00:00+0000", "neither RFC 3339"),
        ("20261101T000000Z", "neither RFC 3339"),  # a basic ISO 8601 form
        ("2026-02-30T00:00:00Z", "neither RFC 3339"),
        ("1793491200000", r"looks like milliseconds: give Unix seconds \(1793491200\)"),
        ("inf", "out of range"),
        ("nan", "neither RFC 3339"),
    ],
)
def test_time_refuses_what_it_cannot_place(text: str, said: str) -> None:
    with pytest.raises(ArgumentError, match=said):
        parse_time(text)


def test_time_accepts_the_epoch_itself() -> None:
    epoch = datetime.fromtimestamp(0, UTC)
    assert parse_time("0") == epoch
    assert parse_time(epoch.isoformat()) == epoch


@pytest.mark.parametrize(
    "text", ["-5", "-0.001", "1969-12-31T00:00:00Z", "1970-01-01T00:30:00+01:00"]
)
def test_time_refuses_what_is_before_the_epoch(text: str) -> None:
    # Kafka cannot look up a negative timestamp (aiokafka raises a bare ValueError).
    with pytest.raises(ArgumentError, match=r"before 1970"):
        parse_time(text)


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_time_refuses_what_has_no_utc_date(text: str) -> None:
    with pytest.raises(ArgumentError, match=r"out of range"):
        parse_time(text)


def test_partition_offset() -> None:
    assert parse_partition_offset("2:1200") == (2, 1200)
    for bad in ("2", "a:1", "1:-4", "1:2:3"):
        with pytest.raises(ArgumentError):
            parse_partition_offset(bad)


def test_events_reducer_reads_a_snapshot_event() -> None:
    (row,) = reduce(_record(SNAPSHOT))
    assert row.id == SNAPSHOT["id"]
    assert (row.type, row.account, row.livemode) == ("invoice.paid", "acct_1Nv0FGQ9RKHgCVdK", True)
    assert (row.object_id, row.api_version) == ("in_1Pgc6tB7WZ01zgkWu9fdqL6I", "2025-10-29.clover")
    assert (row.created, row.partition, row.kafka_offset) == (1_764_000_123.0, 2, 41)
    assert row.received_at == 1_764_000_000.0  # the Kafka timestamp: the time received


def test_events_reducer_reads_a_thin_event() -> None:
    (row,) = reduce(_record(THIN))
    assert row.object_id == "mtr_test_61R9"
    assert row.account == "acct_1Nv0FGQ9RKHgCVdK"
    assert row.created == datetime(2026, 11, 25, 10, 0, 0, 123000, tzinfo=UTC).timestamp()
    assert row.api_version is None


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b"[1, 2]",
        {"id": "cus_1", "type": "x", "created": 1},
        {"id": "evt_1", "created": 1},
        {"id": "evt_1", "type": "x"},
        {"id": "evt_1", "type": "x", "created": "soon"},
        {"id": "evt_1", "type": "x", "created": True},
    ],
)
def test_events_reducer_refuses_what_is_not_a_stripe_event(value: bytes | dict[str, Any]) -> None:
    with pytest.raises(PoisonRecord):
        reduce(_record(value))


def test_dead_letter_headers_keep_the_original_and_say_where_and_why() -> None:
    record = _record(SNAPSHOT, stripe_event_id=str(SNAPSHOT["id"]))
    headers = dict(headers_for(DeadLetter("events", record, "apply failed: boom" * 500)))
    assert headers["stripe-event-id"] == str(SNAPSHOT["id"]).encode()
    assert headers["lattice-projector"] == b"events"
    assert headers["lattice-origin-topic"] == b"stripe.events"
    assert (headers["lattice-origin-partition"], headers["lattice-origin-offset"]) == (b"2", b"41")
    assert len(headers["lattice-error"]) == 2000


def test_thin_events_are_told_from_full_ones() -> None:
    assert is_thin(_record(THIN))
    assert not is_thin(_record({**THIN, "data": {"reason": {}}}))
    assert not is_thin(_record(SNAPSHOT))
    assert not is_thin(_record(b'"v2.core.event" but not JSON'))


def test_only_database_failures_are_transient() -> None:
    assert is_transient(ConnectionResetError())
    assert is_transient(asyncpg.exceptions.AdminShutdownError("terminating"))
    assert is_transient(asyncpg.exceptions.ConnectionDoesNotExistError("closed"))
    assert is_transient(asyncpg.exceptions.SerializationError("retry"))
    assert is_transient(asyncpg.exceptions.DeadlockDetectedError("retry"))
    assert not is_transient(asyncpg.exceptions.UniqueViolationError("dup"))
    assert not is_transient(asyncpg.exceptions.CharacterNotInRepertoireError("nul"))
    assert not is_transient(ValueError("bug"))


def test_a_dead_letter_send_the_broker_may_yet_take_is_waited_for() -> None:
    """The dead-letter producer fails inside the batch's transaction: a broker away or a
    leader moving must be waited out like the database (it crashed the process); a letter
    refused for good is raised, never retried for ever."""
    assert is_transient(KafkaConnectionError())
    assert is_transient(KafkaTimeoutError())
    assert is_transient(NotLeaderForPartitionError())
    assert is_transient(UnknownTopicOrPartitionError())
    assert not is_transient(MessageSizeTooLargeError())
    assert not is_transient(asyncpg.ClientConfigurationError("sslmode"))


def test_catalog_finds_the_events_projection_and_refuses_unknown_names() -> None:
    found = catalog.discover()
    assert found["events"].name == "events"
    assert [p.name for p in catalog.select(["events"], found)] == ["events"]
    assert len(catalog.select([], found)) == len(found)
    with pytest.raises(catalog.UnknownProjection, match=r"known: .*events"):
        catalog.select(["nope"], found)


def test_progress_rate_and_time_left() -> None:
    progress = Progress(done=30_000, total=120_000, seconds=2.0)
    assert progress.rate == 15_000
    assert progress.eta_seconds == 6.0
    assert Progress(0, 10, 0.0).eta_seconds is None


def test_status_table_lines_up() -> None:
    rows = [
        PartitionStatus(
            "events",
            "stripe.events",
            0,
            120,
            130,
            10,
            datetime(2026, 11, 25, 10, tzinfo=UTC),
            1,
            0,
        ),
        PartitionStatus("events", "stripe.events", 1, None, 7, 7, None, 0, 0),
    ]
    lines = render(rows).splitlines()
    assert lines[1].split() == [
        "events",
        "stripe.events",
        "0",
        "120",
        "130",
        "10",
        "2026-11-25T10:00:00Z",
        "1",
    ]
    assert lines[2].split() == ["events", "stripe.events", "1", "-", "7", "7", "-", "0"]
    assert rows[0].as_json()["last_event_at"] == "2026-11-25T10:00:00+00:00"
