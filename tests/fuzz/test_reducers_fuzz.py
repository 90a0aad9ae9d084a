"""Every projection's reducer, fed garbage and real events with fields changed.

A reducer is pure and sits between the log and a table: whatever the record, it either
returns changes (a sequence) or raises `PoisonRecord`, which the runner dead-letters with
its reason. Any other exception would stall a partition on a record that can never be
applied. Projections are found through the catalog, so each new one is covered as it lands.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from deploy.settings import Settings
from ingest.record import build_record
from projectors.base import PoisonRecord, Record
from projectors.catalog import discover
from schemas.envelope import parse_event
from schemas.usage import parse_usage_fact
from tests.fixtures import stripe_objects as so
from tests.fixtures.connect_streams import everything
from tests.fixtures.records import as_record
from tests.fuzz.conftest import fuzz_settings
from tests.fuzz.strategies import json_values, mutated
from tests.support.meter_scenario import billing_month

PROJECTIONS = discover()
SETTINGS = Settings()


@functools.cache
def seeds() -> list[tuple[str, dict[str, Any]]]:
    """Real inputs of every projection: (topic, value) pairs."""
    sub = so.subscription(era="legacy", customer="cus_1")
    inv = so.invoice(era="basil", subscription=sub["id"])
    stripe = [
        so.event("customer.subscription.updated", sub, era="legacy"),
        so.event("customer.subscription.deleted", so.subscription(status="canceled")),
        so.event("invoice.paid", inv),
        so.event("invoice.payment_failed", so.invoice(era="legacy", subscription="sub_2")),
        so.event("invoice_payment.paid", so.invoice_payment(invoice=inv["id"])),
        *everything().events,
    ]
    found = [(SETTINGS.topic, e) for e in stripe]
    for record in billing_month("_fuzz").records():
        topic = SETTINGS.usage_topic if record.topic == "usage.reported" else SETTINGS.topic
        found.append((topic, orjson.loads(record.value)))
    return found


def _record(topic: str, value: bytes, headers: dict[str, bytes], offset: int) -> Record:
    return Record(topic, 0, offset, b"k", value, headers, 1_764_000_000_000)


def _headers_of(event: dict[str, Any]) -> dict[str, bytes]:
    try:
        log = build_record(b"", event, endpoint="platform", received_at=as_record_time())
    except (KeyError, TypeError, AttributeError):
        return {}
    return dict(log.headers)


def as_record_time() -> datetime:
    """The receive time every fuzzed record carries (a fixed moment: runs are repeatable)."""
    return datetime(2025, 11, 24, 16, 0, 1, tzinfo=UTC)


def check(projection: Any, record: Record, *, readable: bool = True) -> None:
    """`reduce` returns a sequence of changes or raises PoisonRecord; nothing else. A
    record that is not `readable` (no Stripe event, no usage fact) changes no table."""
    reason: str | None = None
    try:
        changes = projection.reduce(record)
    except PoisonRecord as exc:
        reason = str(exc)
    except Exception as exc:
        pytest.fail(
            f"{projection.name}.reduce raised {type(exc).__name__}: {exc!r} "
            f"for {record.value[:300]!r} (headers {record.headers})"
        )
    if reason is not None:
        assert reason, "a poison record needs a reason for its dead letter"
    else:
        assert isinstance(changes, Sequence), type(changes)
        assert readable or not changes, (
            f"{projection.name}.reduce made {changes!r} of {record.value[:300]!r}"
        )


def readable(topic: str, value: bytes) -> bool:
    """Whether `value` is a Stripe event (on the log) or a usage fact (on the usage
    topic), as the receiver and the usage schema judge: the only records that may change
    a table."""
    try:
        if topic == SETTINGS.usage_topic:
            parse_usage_fact(value)
        else:
            parse_event(value)
    except ValueError:  # EnvelopeError, UsageFactError
        return False
    return True


@pytest.mark.parametrize("name", list(PROJECTIONS))
@fuzz_settings(250)
@given(data=st.data())
def test_mutated_real_events_are_changes_or_poison(
    name: str, data: st.DataObject, cases: Counter[str]
) -> None:
    projection = PROJECTIONS[name]
    topic, original = data.draw(st.sampled_from(seeds()))
    changed = data.draw(mutated(original))
    # Headers as the receiver wrote them for the original (the usual case: a body with a
    # surprising field), or for the changed one, or none at all (a foreign producer).
    headers = data.draw(
        st.sampled_from([_headers_of(original), _headers_of(changed), {}])
        if isinstance(changed, dict)
        else st.just({})
    )
    cases[f"reducer {name}: mutated real events"] += 1
    # json, not orjson: the mutations include integers past 64 bits, which Stripe could send.
    # (A record of the log without the receiver's headers is first checked by the runner
    # as the receiver checks a body: `test_runner`'s envelope test.)
    check(projection, _record(topic, json.dumps(changed).encode(), headers, 0))


@pytest.mark.parametrize("name", list(PROJECTIONS))
@fuzz_settings(150)
@given(
    value=st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode())),
    header_values=st.dictionaries(
        st.sampled_from(
            [
                "stripe-event-id",
                "stripe-event-type",
                "stripe-account",
                "stripe-livemode",
                "lattice-received-at",
                "lattice-endpoint",
            ]
        ),
        st.binary(max_size=40),
    ),
    topic=st.sampled_from([SETTINGS.topic, SETTINGS.usage_topic, "elsewhere"]),
)
def test_garbage_records_are_changes_or_poison(
    name: str,
    value: bytes,
    header_values: dict[str, bytes],
    topic: str,
    cases: Counter[str],
) -> None:
    cases[f"reducer {name}: garbage records"] += 1
    record = _record(topic, value, header_values, 0)
    check(PROJECTIONS[name], record, readable=readable(topic, value))


def test_every_projection_is_fuzzed() -> None:
    """The catalog found the projections the design names (new ones join automatically)."""
    assert {"events", "subscriptions", "invoices", "meters", "connect"} <= set(PROJECTIONS)
    assert as_record(so.event("invoice.paid", so.invoice())).value  # the seeds' shape builds


# Shapes the guided fuzzer (guided.py) found raising instead of poisoning, kept as cases:
# a list that is not a list, a formula that cannot be looked up, a time past any calendar.
FOUND_BY_GUIDED = [
    (("data", "object", "lines", "data"), 5),
    (("data", "object", "items", "data"), 1.5),
    (("data", "object", "reversals", "data"), True),
    (("data", "object", "refunds", "data"), 7),
    (("data", "object", "created"), 2**63),
    (("data", "object", "default_aggregation", "formula"), []),
    (("data", "reason", "error_types"), True),
]


@pytest.mark.parametrize(("path", "value"), FOUND_BY_GUIDED)
def test_shapes_found_by_the_guided_fuzzer_are_changes_or_poison(
    path: tuple[str, ...], value: Any
) -> None:
    edited = 0
    for topic, original in seeds():
        document = json.loads(json.dumps(original))
        parent = document
        for step in path[:-1]:
            parent = parent.get(step) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or path[-1] not in parent:
            continue
        parent[path[-1]] = value
        edited += 1
        record = _record(topic, json.dumps(document).encode(), _headers_of(document), 0)
        for projection in PROJECTIONS.values():
            check(projection, record)
    assert edited, f"no seed has {'.'.join(path)}"
