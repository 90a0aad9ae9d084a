"""The reducer's fast path for plain usage facts gives exactly what the model gives, and
leaves everything else (and every error message) to the model."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from projectors.base import PoisonRecord
from projectors.meters.changes import UsageReported
from projectors.meters.reducer import _plain_usage_change, usage_change
from schemas.usage import UsageAction, UsageFactError, parse_usage_fact

PLAIN: dict[str, Any] = {
    "identifier": "req_1",
    "event_name": "api_requests",
    "stripe_customer_id": "cus_1",
    "value": "12.50",
    "timestamp": 1_740_000_000,
}


def by_model(raw: bytes) -> UsageReported:
    fact = parse_usage_fact(raw)
    return UsageReported(
        fact.identifier,
        fact.event_name,
        fact.stripe_customer_id,
        fact.value,
        fact.timestamp,
        fact.action is UsageAction.CANCEL,
    )


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"value": "-3"},
        {"value": "007.000"},
        {"value": "0"},
        {"action": "cancel"},
        {"action": "report"},
        {"timestamp": 0},
        {"identifier": "x" * 100, "event_name": "e" * 100},
        {"identifier": "é✓"},
        {"extra": {"ignored": True}},
    ],
)
def test_the_fast_path_takes_plain_facts_and_agrees_with_the_model(
    changes: dict[str, Any],
) -> None:
    raw = orjson.dumps({**PLAIN, **changes})
    fast = _plain_usage_change(raw)
    assert fast is not None
    assert fast == by_model(raw)
    assert str(fast.value) == str(by_model(raw).value)  # the same digits, not just equal


@pytest.mark.parametrize(
    "changes",
    [
        {"value": 12.5},  # a number: the model's exact-decimal rule
        {"value": 3},
        {"value": " 1.5"},
        {"value": "1_000"},
        {"value": "١٢"},  # Arabic-Indic digits
        {"value": "1e3"},
        {"value": "NaN"},
        {"value": True},
        {"timestamp": -1},
        {"timestamp": True},
        {"timestamp": 1.0},
        {"timestamp": "1740000000"},
        {"identifier": ""},
        {"identifier": "x" * 101},
        {"event_name": "e" * 101},
        {"stripe_customer_id": ""},
        {"stripe_customer_id": None},
        {"action": None},
        {"action": "refund"},
        {"action": 1},
    ],
)
def test_anything_else_goes_to_the_model(changes: dict[str, Any]) -> None:
    raw = orjson.dumps({**PLAIN, **changes})
    assert _plain_usage_change(raw) is None
    try:
        expected: UsageReported | str = by_model(raw)
    except UsageFactError as exc:
        expected = str(exc)
    if isinstance(expected, str):
        with pytest.raises(PoisonRecord) as caught:
            usage_change(raw)
        assert str(caught.value) == expected
    else:
        assert usage_change(raw) == expected


@pytest.mark.parametrize("raw", [b"", b"[]", b"null", b"{", b'"fact"'])
def test_values_that_are_not_objects_get_the_models_message(raw: bytes) -> None:
    assert _plain_usage_change(raw) is None
    with pytest.raises(UsageFactError) as model:
        parse_usage_fact(raw)
    with pytest.raises(PoisonRecord, match="not a usage fact") as caught:
        usage_change(raw)
    assert str(caught.value) == str(model.value)
