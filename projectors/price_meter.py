"""Which meter a price bills: a link the `meters` and `invoices` projections both learn
from the events that show a price whole (subscription items, price and plan events, lines
before basil). A price's `recurring.meter` never changes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class PriceMeter:
    """A price bills a meter, as the event `event_id` (created at `created`) showed it."""

    price: str
    meter: str
    event_id: str
    created: int


def meter_of_price(price: Any, plan: Any = None) -> str | None:
    """The meter a price (`recurring.meter`) or legacy plan (`meter`) bills, when they
    are expanded objects."""
    recurring = price.get("recurring") if isinstance(price, Mapping) else None
    meter = _id(recurring.get("meter")) if isinstance(recurring, Mapping) else None
    if meter is None and isinstance(plan, Mapping):
        meter = _id(plan.get("meter"))
    return meter


def _id(value: Any) -> str | None:
    if isinstance(value, Mapping):
        value = value.get("id")
    return value if isinstance(value, str) and value else None
