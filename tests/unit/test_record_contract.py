"""The event log's record headers against their contract (schemas/record.py), for the
records the receiver and backfill build: snapshot, Connect and thin events."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from ingest.record import build_received, build_record
from schemas.record import RecordHeaders, read_headers
from tests.fixtures.records import log_record
from tests.fixtures.stripe_objects import T0, event, invoice, subscription
from tests.support.thin_events import meter_error_report


def test_a_snapshot_events_record_carries_every_contract_header() -> None:
    evt = event("invoice.paid", invoice(status="paid", customer="cus_1"), created=T0)
    headers = read_headers(log_record(evt).headers)
    assert headers.event_id == evt["id"]
    assert headers.event_type == "invoice.paid"
    assert headers.livemode == "false"
    assert headers.api_version == evt["api_version"]
    assert headers.endpoint == "platform"
    assert headers.account is None
    assert headers.source is None


def test_connect_thin_and_backfilled_records_fit_the_contract_too() -> None:
    connect = event(
        "customer.subscription.updated", subscription(customer="cus_2"), account="acct_1"
    )
    assert read_headers(log_record(connect, endpoint="connect").headers).account == "acct_1"
    thin, _ = meter_error_report(context="acct_9")
    ms = int(time.time() * 1000)
    record = build_received(b"{}", thin, endpoint="platform", received_ms=ms)
    received = read_headers(record.headers)
    assert (received.account, received.api_version) == ("acct_9", None)
    backfilled = build_record(
        b"{}", connect, endpoint="backfill", received_at=datetime.now(UTC), source="backfill"
    )
    assert read_headers(backfilled.headers).source == "backfill"


def test_a_header_outside_the_contract_is_refused() -> None:
    evt = event("invoice.paid", invoice(status="paid", customer="cus_1"), created=T0)
    with pytest.raises(ValidationError, match="x-other"):
        read_headers([*log_record(evt).headers, ("x-other", b"1")])
    schema = RecordHeaders.model_json_schema(by_alias=True)
    # DESIGN.md's names, written out: a rename in the model must fail here.
    assert set(schema["properties"]) == {
        "stripe-event-id",
        "stripe-event-type",
        "stripe-account",
        "stripe-livemode",
        "stripe-api-version",
        "lattice-endpoint",
        "lattice-received-at",
        "lattice-source",
    }
    assert set(schema["required"]) == {
        "stripe-event-id",
        "stripe-event-type",
        "stripe-livemode",
        "lattice-endpoint",
        "lattice-received-at",
    }
