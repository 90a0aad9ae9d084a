"""One billing month for the meters projection, covering every case issue 7 names, with the
reconciliation rows it must produce. Used by the store tests and the end-to-end test."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from projectors.base import Record
from tests.fixtures.stripe_objects import (
    MONTH,
    T0,
    event,
    invoice,
    invoice_line,
    price,
    subscription,
    subscription_item,
)
from tests.support.meter_payloads import (
    billing_meter,
    error_report,
    meter_event,
    stripe_record,
    usage_fact,
    usage_record,
)

DAY = 86_400


@dataclass
class Scenario:
    """Stripe events and usage facts, in the order they would plausibly arrive."""

    stripe_events: list[dict[str, Any]] = field(default_factory=list)
    facts: list[dict[str, Any]] = field(default_factory=list)
    # (customer, meter) -> the row's expected (reported, rejected, billed, delta, status)
    expected: dict[tuple[str, str], tuple[str, str, str, str, str]] = field(default_factory=dict)
    meters: dict[str, str] = field(default_factory=dict)

    def records(self) -> list[Record]:
        """Every input as a record; usage facts after the Stripe events of their month."""
        stripe = [stripe_record(e, offset=i) for i, e in enumerate(self.stripe_events)]
        usage = [usage_record(f, offset=i) for i, f in enumerate(self.facts)]
        return stripe + usage


def billing_month(tag: str = "", *, start: int = T0, end: int = T0 + MONTH) -> Scenario:
    """Three meters (sum, count, last), one basil and one legacy customer, and every case,
    in the billing period [start, end)."""
    s = Scenario()
    sum_meter = billing_meter(event_name=f"api_requests{tag}", formula="sum")
    count_meter = billing_meter(event_name=f"logins{tag}", formula="count")
    last_meter = billing_meter(event_name=f"seats{tag}", formula="last")
    s.meters = {"sum": sum_meter["id"], "count": count_meter["id"], "last": last_meter["id"]}
    s.stripe_events += [meter_event(m) for m in (sum_meter, count_meter, last_meter)]
    # The meter's display name changed later: the newer snapshot wins whatever the order.
    renamed = dict(sum_meter, display_name="API calls")
    s.stripe_events.append(meter_event(renamed, created=T0, kind="updated"))

    basil, legacy = f"cus_basil{tag}", f"cus_legacy{tag}"
    p_sum, p_count, p_last = (
        price(meter=m["id"], unit_amount=None) for m in (sum_meter, count_meter, last_meter)
    )
    items = [
        subscription_item(era="basil", item_price=p, period_start=start, period_end=end)
        for p in (p_sum, p_count, p_last)
    ]
    sub_b = subscription(
        era="basil", customer=basil, items=items, period_start=start, period_end=end
    )
    s.stripe_events.append(event("customer.subscription.created", sub_b, created=start))
    p_legacy = price(meter=sum_meter["id"], unit_amount=None)
    sub_l = subscription(
        era="legacy",
        customer=legacy,
        items=[subscription_item(era="legacy", item_price=p_legacy)],
        period_start=start,
        period_end=end,
    )
    s.stripe_events.append(
        event("customer.subscription.created", sub_l, created=start, era="legacy")
    )

    # Basil customer: 0.1 x 10 (each reported twice), a cancelled fact, a rejected fact.
    for n in range(10):
        fact = usage_fact(
            f"b-sum-{tag}{n}",
            basil,
            0.1,
            event_name=sum_meter["event_name"],
            timestamp=start + DAY + n,
        )
        s.facts += [fact, dict(fact)]
    s.facts.append(
        usage_fact(
            f"b-cancel{tag}",
            basil,
            "5",
            event_name=sum_meter["event_name"],
            timestamp=start + 2 * DAY,
        )
    )
    s.facts.append(
        usage_fact(
            f"b-cancel{tag}",
            basil,
            "5",
            event_name=sum_meter["event_name"],
            timestamp=start + 2 * DAY,
            action="cancel",
        )
    )
    s.facts.append(
        usage_fact(
            f"b-rejected{tag}",
            basil,
            "7",
            event_name=sum_meter["event_name"],
            timestamp=start + 3 * DAY,
        )
    )
    s.stripe_events.append(
        error_report(
            identifiers=[f"b-rejected{tag}"],
            meter=sum_meter["id"],
            code="invalid_value",
            extra_errors=2,
            at=start + 3 * DAY,
        )
    )
    # A count meter (3 logins) and a last meter (5 then 8 seats: 8 is billed).
    for n in range(3):
        s.facts.append(
            usage_fact(
                f"b-login-{tag}{n}",
                basil,
                1,
                event_name=count_meter["event_name"],
                timestamp=start + DAY + n,
            )
        )
    s.facts.append(
        usage_fact(
            f"b-seats-{tag}a", basil, 5, event_name=last_meter["event_name"], timestamp=start + DAY
        )
    )
    s.facts.append(
        usage_fact(
            f"b-seats-{tag}b",
            basil,
            8,
            event_name=last_meter["event_name"],
            timestamp=start + 5 * DAY,
        )
    )
    inv_b = invoice(
        era="basil",
        status="draft",
        customer=basil,
        subscription=sub_b["id"],
        lines=[
            invoice_line(
                era="basil", line_price=p_sum, quantity=1, period_start=start, period_end=end
            ),
            invoice_line(
                era="basil", line_price=p_count, quantity=3, period_start=start, period_end=end
            ),
            invoice_line(
                era="basil", line_price=p_last, quantity=8, period_start=start, period_end=end
            ),
        ],
        created=end,
    )
    s.stripe_events.append(event("invoice.created", inv_b, created=end))
    s.stripe_events.append(event("invoice.finalized", dict(inv_b, status="open"), created=end + 60))
    s.stripe_events.append(event("invoice.paid", dict(inv_b, status="paid"), created=end + 120))
    s.stripe_events.append(event("invoice.paid", dict(inv_b, status="paid"), created=end + 120))

    # Legacy customer: 2 units billed, then 1.5 more reported after the invoice was final.
    s.facts.append(
        usage_fact(
            f"l-1{tag}", legacy, "2", event_name=sum_meter["event_name"], timestamp=start + 10 * DAY
        )
    )
    s.facts.append(
        usage_fact(
            f"l-late{tag}", legacy, "1.5", event_name=sum_meter["event_name"], timestamp=end - 60
        )
    )
    inv_l = invoice(
        era="legacy",
        status="open",
        customer=legacy,
        subscription=sub_l["id"],
        lines=[
            invoice_line(
                era="legacy",
                line_price=p_legacy,
                quantity=2,
                subscription=sub_l["id"],
                period_start=start,
                period_end=end,
            )
        ],
    )
    s.stripe_events.append(event("invoice.finalized", inv_l, created=end + 60, era="legacy"))

    # A customer Stripe does not know: rejected by no_meter_found, never placed in a period.
    s.facts.append(
        usage_fact(
            f"ghost{tag}", f"cus_ghost{tag}", 4, event_name=f"unknown{tag}", timestamp=start + DAY
        )
    )
    s.stripe_events.append(
        error_report(identifiers=[f"ghost{tag}"], meter=None, code="no_meter", at=start + 2 * DAY)
    )

    s.expected = {
        (basil, sum_meter["id"]): ("8", "7", "1", "0", "matched"),
        (basil, count_meter["id"]): ("3", "0", "3", "0", "matched"),
        (basil, last_meter["id"]): ("8", "0", "8", "0", "matched"),
        (legacy, sum_meter["id"]): ("3.5", "0", "2", "1.5", "under_billed"),
    }
    return s


def expected_decimal(row: tuple[str, str, str, str, str]) -> tuple[Any, ...]:
    """An expected row with its numbers as Decimals."""
    return (*(Decimal(v) for v in row[:4]), row[4])
