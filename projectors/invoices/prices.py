"""Which meter a price bills, from the events that show the price whole (pure).

A basil invoice line names its price by id only (`pricing.price_details.price`), so the
line cannot say the price's meter; the subscription's items, `price.*` and `plan.*`
events, and lines before basil show the whole price, `recurring.meter` included. A
price's `recurring` never changes, so one link per price is the link.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from projectors.subscriptions.snapshot import Event, list_data, mapping, ref

# Events that show prices whole, with their meter: the subscription's items, or the price.
PRICE_EVENTS = frozenset(
    {
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "price.created",
        "price.updated",
        "plan.created",
        "plan.updated",
    }
)


@dataclass(frozen=True, slots=True)
class PriceMeter:
    """A metered price and its meter, and the event that showed it."""

    price: str
    meter: str
    event_id: str
    created: int


def price_meters(event: Event) -> list[PriceMeter]:
    """The metered prices a subscription's items, or a price (or legacy plan), show."""
    obj = event.object
    if event.type.startswith("customer.subscription."):
        items = list_data(obj.get("items"))
        prices = [item.get("price") or item.get("plan") for item in items if type(item) is dict]
    else:
        prices = [obj]
    links = []
    for price in prices:
        found, meter = ref(price), meter_of(mapping(price))
        if found is not None and meter is not None:
            links.append(PriceMeter(found, meter, event.id, event.created))
    return links


def meter_of(price: Mapping[str, Any]) -> str | None:
    """The meter of an expanded price (`recurring.meter`) or legacy plan (`meter`)."""
    return ref(mapping(price.get("recurring")).get("meter")) or ref(price.get("meter"))
