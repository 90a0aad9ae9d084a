"""The usage-fact contract: parsing, exact decimals, and the committed JSON Schema."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from schemas.export import generated
from schemas.usage import (
    MAX_TIMESTAMP,
    UsageAction,
    UsageFactError,
    json_schema,
    parse_usage_fact,
)


def fact_json(**fields: object) -> bytes:
    base: dict[str, object] = {
        "identifier": "req-1",
        "event_name": "api_requests",
        "stripe_customer_id": "cus_1",
        "value": "3",
        "timestamp": 1_764_000_000,
    }
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not None}).encode()


def test_every_committed_schema_is_the_generated_one() -> None:
    files = generated()
    assert {path.name for path in files} == {
        "usage_fact.schema.json",
        "stripe_event.schema.json",
        "log_record_headers.schema.json",
    }
    for path, text in files.items():
        assert path.read_text() == text, f"run `python -m schemas.export` to regenerate {path}"


def test_the_schema_names_the_contract_fields() -> None:
    schema = json_schema()
    assert schema["required"] == [
        "identifier",
        "event_name",
        "stripe_customer_id",
        "value",
        "timestamp",
    ]
    assert set(schema["properties"]) == {*schema["required"], "action"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("0.1", Decimal("0.1")), (0.1, Decimal("0.1")), (7, Decimal(7)), ("12.50", Decimal("12.50"))],
)
def test_value_is_an_exact_decimal_from_a_string_or_a_number(
    raw: object, expected: Decimal
) -> None:
    assert parse_usage_fact(fact_json(value=raw)).value == expected


@pytest.mark.parametrize(
    "written", ["12345678901234567890.5", "1.00000000000000000001", "2.5e-20", "1E+30"]
)
def test_a_number_keeps_every_digit_it_was_written_with(written: str) -> None:
    """Past a float's ~17 significant digits (a Java or Go BigDecimal writes them): the
    value is what the producer wrote, as Stripe, which takes it as text, would read it."""
    raw = fact_json().replace(b'"value": "3"', f'"value": {written}'.encode())
    assert parse_usage_fact(raw).value == Decimal(written)


@pytest.mark.parametrize(
    "written", ['"0.' + "0" * 16383 + '1"', "1e-20000", '"1' + "0" * 131072 + '"']
)
def test_a_value_no_numeric_column_could_hold_is_refused(written: str) -> None:
    """Past PostgreSQL's `numeric` (16383 digits after the point, 131072 before): refused
    as the fact's fault, not taken as 0 (a float reads 1e-20000 so) nor failing the batch
    that would write it."""
    raw = fact_json().replace(b'"value": "3"', f'"value": {written}'.encode())
    with pytest.raises(UsageFactError, match="at most 131072 digits before the point"):
        parse_usage_fact(raw)


def test_tenths_add_up_exactly() -> None:
    fact = parse_usage_fact(fact_json(value=0.1))
    assert sum([fact.value] * 10, Decimal(0)) == Decimal(1)


def test_action_defaults_to_report_and_accepts_cancel() -> None:
    assert parse_usage_fact(fact_json()).action is UsageAction.REPORT
    assert parse_usage_fact(fact_json(action="cancel")).action is UsageAction.CANCEL


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"identifier": None}, "identifier"),
        ({"value": "ten"}, "value"),
        ({"value": True}, "value"),
        ({"value": "NaN"}, "value"),
        ({"timestamp": "1764000000"}, "timestamp"),
        ({"timestamp": 1.5}, "timestamp"),
        ({"action": "refund"}, "action"),
        ({"stripe_customer_id": ""}, "stripe_customer_id"),
    ],
)
def test_an_invalid_fact_is_refused_naming_the_field(fields: dict[str, object], names: str) -> None:
    with pytest.raises(UsageFactError, match=names):
        parse_usage_fact(fact_json(**fields))


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"identifier=req-1", "not a usage fact: the record: Invalid JSON"),
        (b"[]", "not a usage fact: the record: Input should be an object"),
    ],
)
def test_a_record_that_is_no_json_object_is_refused_as_a_whole(raw: bytes, says: str) -> None:
    # Not blamed on the field named `value`: the record itself is wrong.
    with pytest.raises(UsageFactError) as refused:
        parse_usage_fact(raw)
    assert str(refused.value).startswith(says)


@pytest.mark.parametrize(
    "value", ["1e3", "+5", ".5", "5.", " 1 ", "12\n", "1_000", "\u0663", "NaN"]
)
def test_a_value_string_the_schema_refuses_is_refused(value: str) -> None:
    """One contract: what a producer's schema check refuses, the projector refuses too."""
    with pytest.raises(UsageFactError, match="value"):
        parse_usage_fact(fact_json(value=value))


def test_a_whole_float_timestamp_is_read_as_the_schema_allows() -> None:
    """JSON Schema's `integer` takes 1764000000.0 (the same number): so does the parser."""
    assert parse_usage_fact(fact_json(timestamp=1_764_000_000.0)).timestamp == 1_764_000_000
    with pytest.raises(UsageFactError, match="timestamp"):
        parse_usage_fact(fact_json(timestamp=1_764_000_000.5))


@pytest.mark.parametrize("timestamp", [1_764_000_000_000, 1_764_000_000_000.0, 2**64])
def test_a_timestamp_in_milliseconds_is_refused_saying_so(timestamp: float) -> None:
    """Taken as seconds it would put the usage in a period of the year 55,000, never
    billed: refused, the dead letter saying why."""
    with pytest.raises(UsageFactError, match=r"timestamp: .*Unix seconds.*milliseconds\?"):
        parse_usage_fact(fact_json(timestamp=timestamp))
    assert parse_usage_fact(fact_json(timestamp=MAX_TIMESTAMP)).timestamp == MAX_TIMESTAMP
