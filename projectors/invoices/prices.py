"""Which meter a price bills, from the events that show the price whole (pure).

A basil invoice line names its price by id only (`pricing.price_details.price`), so the
line cannot say the price's meter; the subscription's items, `price.*` and `plan.*`
events, and lines before basil show the whole price, `recurring.meter` included. A
price's `recurring` never changes, so one link per price is the link.
"""

from __future__ import annotations

from projectors.price_meter import PriceMeter as PriceMeter
from projectors.price_meter import meter_of_price
from projectors.subscriptions.snapshot import Event, list_data, ref

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


def price_meters(event: Event) -> list[PriceMeter]:
    """The metered prices a subscription's items, or a price (or legacy plan), show."""
    obj = event.object
    if event.type.startswith("customer.subscription."):
        # (price, plan) of each item; a price or plan event shows the one object.
        shown = [
            (i.get("price"), i.get("plan")) for i in list_data(obj.get("items")) if type(i) is dict
        ]
    else:
        shown = [(obj, obj)]
    links = []
    for price, plan in shown:
        found, meter = ref(price) or ref(plan), meter_of_price(price, plan)
        if found is not None and meter is not None:
            links.append(PriceMeter(found, meter, event.id, event.created))
    return links
