"""Subscriptions and invoices as mutable simulation state, rendered in either API era."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ingest.simulate.shapes import Json, Price, is_new_era


@dataclass(slots=True)
class Item:
    """A subscription item: a price, and a quantity unless the price is metered."""

    id: str
    price: Price
    quantity: int | None
    created: int


@dataclass(slots=True)
class Subscription:
    """What Stripe knows about one subscription at a moment of the month."""

    id: str
    customer: str
    created: int
    currency: str
    status: str
    items: list[Item]
    period_start: int
    period_end: int
    trial_start: int | None = None
    trial_end: int | None = None
    cancel_at_period_end: bool = False
    canceled_at: int | None = None
    ended_at: int | None = None
    latest_invoice: str | None = None
    # Why Stripe canceled it: the customer asked, or its payments kept failing.
    cancellation_reason: str = "cancellation_requested"

    def to_json(self, api_version: str) -> Json:
        """The subscription object in the shape of `api_version`."""
        new = is_new_era(api_version)
        items = []
        for item in self.items:
            one: Json = {
                "id": item.id,
                "object": "subscription_item",
                "billing_thresholds": None,
                "created": item.created,
                "discounts": [],
                "metadata": {},
                "price": item.price.to_json(),
                "subscription": self.id,
                "tax_rates": [],
            }
            if item.quantity is not None:
                one["quantity"] = item.quantity
            if new:
                one["current_period_start"] = self.period_start
                one["current_period_end"] = self.period_end
            items.append(one)
        body: Json = {
            "id": self.id,
            "object": "subscription",
            "application": None,
            "application_fee_percent": None,
            "automatic_tax": {"enabled": False},
            # Fixed at creation (or the trial's end): renewals never move it.
            "billing_cycle_anchor": self.created if self.trial_end is None else self.trial_end,
            "cancel_at": self.period_end if self.cancel_at_period_end else None,
            "cancel_at_period_end": self.cancel_at_period_end,
            "canceled_at": self.canceled_at,
            "cancellation_details": {
                "comment": None,
                "feedback": None,
                "reason": self.cancellation_reason if self.canceled_at else None,
            },
            "collection_method": "charge_automatically",
            "created": self.created,
            "currency": self.currency,
            "customer": self.customer,
            "days_until_due": None,
            "default_payment_method": None,
            "description": None,
            "discounts": [],
            "ended_at": self.ended_at,
            "items": {
                "object": "list",
                "data": items,
                "has_more": False,
                "url": f"/v1/subscription_items?subscription={self.id}",
            },
            "latest_invoice": self.latest_invoice,
            "livemode": False,
            "metadata": {},
            "on_behalf_of": None,
            "pause_collection": None,
            "pending_update": None,
            "schedule": None,
            "start_date": self.created,
            "status": self.status,
            "test_clock": None,
            "transfer_data": None,
            "trial_end": self.trial_end,
            "trial_start": self.trial_start,
        }
        if not new:
            body["current_period_start"] = self.period_start
            body["current_period_end"] = self.period_end
            body["discount"] = None
        return body


@dataclass(slots=True)
class Line:
    """An invoice line: a price over a period."""

    id: str
    price: Price
    quantity: int
    amount: int
    period_start: int
    period_end: int
    subscription_item: str
    proration: bool = False


@dataclass(slots=True)
class Invoice:
    """What Stripe knows about one invoice at a moment of the month."""

    id: str
    customer: str
    subscription: str
    billing_reason: str
    currency: str
    created: int
    period_start: int
    period_end: int
    lines: list[Line] = field(default_factory=list)
    status: str = "draft"
    attempt_count: int = 0
    next_payment_attempt: int | None = None
    amount_paid: int = 0
    finalized_at: int | None = None
    paid_at: int | None = None
    voided_at: int | None = None
    uncollectible_at: int | None = None

    @property
    def total(self) -> int:
        """The sum of the lines, in the minor unit."""
        return sum(line.amount for line in self.lines)

    @property
    def amount_remaining(self) -> int:
        """What is still owed."""
        return self.total - self.amount_paid

    def to_json(self, api_version: str) -> Json:
        """The invoice object in the shape of `api_version`."""
        new = is_new_era(api_version)
        body: Json = {
            "id": self.id,
            "object": "invoice",
            "account_country": "US",
            "account_name": "Lattice Demo SaaS",
            "amount_due": self.total,
            "amount_paid": self.amount_paid,
            "amount_remaining": self.amount_remaining,
            "amount_shipping": 0,
            "application": None,
            "attempt_count": self.attempt_count,
            "attempted": self.attempt_count > 0,
            "auto_advance": self.status in ("draft", "open"),
            "automatic_tax": {"enabled": False},
            "billing_reason": self.billing_reason,
            "collection_method": "charge_automatically",
            "created": self.created,
            "currency": self.currency,
            "customer": self.customer,
            "customer_email": None,
            "description": None,
            "discounts": [],
            "due_date": None,
            "effective_at": self.finalized_at,
            "ending_balance": 0 if self.finalized_at else None,
            "footer": None,
            "hosted_invoice_url": None,
            "lines": {
                "object": "list",
                "data": [self._line(line, new) for line in self.lines],
                "has_more": False,
                "url": f"/v1/invoices/{self.id}/lines",
            },
            "livemode": False,
            "metadata": {},
            "next_payment_attempt": self.next_payment_attempt,
            "number": None if self.finalized_at is None else f"{self.id[-8:].upper()}-0001",
            "period_end": self.period_end,
            "period_start": self.period_start,
            "starting_balance": 0,
            "status": self.status,
            "status_transitions": {
                "finalized_at": self.finalized_at,
                "marked_uncollectible_at": self.uncollectible_at,
                "paid_at": self.paid_at,
                "voided_at": self.voided_at,
            },
            "subtotal": self.total,
            "subtotal_excluding_tax": self.total,
            "test_clock": None,
            "total": self.total,
            "total_discount_amounts": [],
            "total_excluding_tax": self.total,
            "webhooks_delivered_at": self.created,
        }
        if new:
            body["parent"] = {
                "type": "subscription_details",
                "quote_details": None,
                "subscription_details": {"metadata": {}, "subscription": self.subscription},
            }
            body["total_taxes"] = []
        else:
            body.update(
                {
                    "subscription": self.subscription,
                    "paid": self.status == "paid",
                    "charge": None,
                    "payment_intent": None,
                    "tax": None,
                    "discount": None,
                    "subscription_details": {"metadata": {}},
                    "total_tax_amounts": [],
                }
            )
        return body

    def _line(self, line: Line, new: bool) -> Json:
        # A proration is an invoice item the subscription's change created (Stripe: a
        # line of `type: invoiceitem` naming it, or its `parent`'s `invoice_item` since
        # basil); never discountable.
        item = f"ii_{line.id.split('_', 1)[-1]}" if line.proration else None
        one: Json = {
            "id": line.id,
            "object": "line_item",
            "amount": line.amount,
            "currency": self.currency,
            "description": f"{line.quantity} x {line.price.product}",
            "discount_amounts": [],
            "discountable": not line.proration,
            "discounts": [],
            "invoice": self.id,
            "livemode": False,
            "metadata": {},
            "period": {"start": line.period_start, "end": line.period_end},
            "quantity": line.quantity,
        }
        details: dict[str, Any] = {
            "invoice_item": item,
            "proration": line.proration,
            "proration_details": {"credited_items": None},
            "subscription": self.subscription,
            "subscription_item": line.subscription_item,
        }
        if new:
            one["parent"] = {
                "type": "subscription_item_details",
                "invoice_item_details": None,
                "subscription_item_details": details,
            }
            one["pricing"] = {
                "type": "price_details",
                "unit_amount_decimal": line.price.unit_amount_decimal,
                "price_details": {"price": line.price.id, "product": line.price.product},
            }
            one["subtotal"] = line.amount
            one["taxes"] = []
            one["pretax_credit_amounts"] = []
            one["quantity_decimal"] = None if line.quantity is None else str(line.quantity)
            one["subscription"] = self.subscription  # still on the line in this era too
        else:
            one.update(
                {
                    "amount_excluding_tax": line.amount,
                    "invoice_item": item,
                    "price": line.price.to_json(),
                    "plan": None,
                    "proration": line.proration,
                    "proration_details": {"credited_items": None},
                    "subscription": self.subscription,
                    "subscription_item": line.subscription_item,
                    "tax_amounts": [],
                    "tax_rates": [],
                    "type": "invoiceitem" if line.proration else "subscription",
                    "unit_amount_excluding_tax": line.price.unit_amount_decimal,
                }
            )
        return one
