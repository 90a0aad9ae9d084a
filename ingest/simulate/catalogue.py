"""The simulated platform's price list."""

from __future__ import annotations

from dataclasses import dataclass

from ingest.simulate.shapes import Price
from ingest.simulate.story import Story


@dataclass(frozen=True, slots=True)
class Catalogue:
    """The platform's prices."""

    starter: Price
    pro: Price
    business_eur: Price
    team_eur_yearly: Price
    metered: Price


def catalogue(story: Story) -> Catalogue:
    """The prices every customer chooses from; the metered one belongs to the meter."""
    ids = story.ids

    def price(product: str, currency: str, amount: int, interval: str = "month") -> Price:
        return Price(ids.new("price"), product, currency, amount, str(amount), interval)

    return Catalogue(
        starter=price("prod_starter", "usd", 2900),
        pro=price("prod_pro", "usd", 9900),
        business_eur=price("prod_business", "eur", 4900),
        team_eur_yearly=price("prod_team", "eur", 120_000, "year"),
        metered=Price(
            ids.new("price"), "prod_api_calls", "usd", None, "0.5", "month", meter=story.meter_id
        ),
    )
