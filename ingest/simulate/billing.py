"""Customers' months: sign-ups, trials, renewals, dunning, cancellations, plan changes."""

from __future__ import annotations

import copy

from ingest.simulate.billing_shapes import Invoice, Item, Line, Subscription
from ingest.simulate.catalogue import Catalogue
from ingest.simulate.shapes import Json, Price, customer, is_new_era, version_at
from ingest.simulate.story import DAY, HOUR, MONTH_START, PERIOD, UPGRADED_AT, YEAR, Story
from ingest.simulate.usage import credit_usage, metered_month, unbilled_usage

# Scenario -> weight. "late_*" sign up near the end of the month: no renewal in it.
SCENARIOS = {
    "active": 30,
    "trial": 12,
    "late_trial": 5,
    "late_active": 5,
    "dunning_recovered": 10,
    "dunning_canceled": 7,
    "dunning_open": 7,
    "cancel_at_period_end": 8,
    "late_cancel_requested": 4,
    "plan_change": 12,
    "canceled_metered": 4,
}
RETRY_DELAYS = (3 * DAY, 5 * DAY)  # Smart Retries, simplified: attempts 2 and 3


def period_of(price: Price) -> int:
    """Seconds in one billing period of `price`: a 30-day month or a 365-day year."""
    return YEAR if price.interval == "year" else PERIOD


class CustomerMonth:
    """One customer's month, emitting each event as Stripe would send it."""

    def __init__(self, story: Story, prices: Catalogue, api_version: str, index: int) -> None:
        self.story, self.prices, self.mode = story, prices, api_version
        rng = story.rng
        self.scenario = rng.choices(list(SCENARIOS), weights=list(SCENARIOS.values()))[0]
        late = self.scenario.startswith("late_")
        day = rng.randint(20, 27) if late else rng.randint(0, 8)
        self.t = MONTH_START + day * DAY + rng.randint(0, DAY - 1)
        self.id = story.ids.new("cus")
        self.email = f"customer{index:05d}@example.com"
        self.customer = customer(self.id, self.t, self.email, f"Customer {index}", delinquent=False)
        monthly_only = self.scenario.startswith(("dunning", "plan_change", "cancel"))
        choices = [prices.starter, prices.pro, prices.business_eur]
        if not monthly_only:
            choices.append(prices.team_eur_yearly)
        if self.scenario == "plan_change":
            choices = [prices.starter]
        if self.scenario == "canceled_metered":
            choices = [prices.starter, prices.pro]  # usd, as the metered price is
        price = rng.choice(choices)
        quantity = rng.randint(1, 3) if price.product in ("prod_pro", "prod_team") else 1
        self.metered = self.scenario == "canceled_metered" or (
            price.currency == "usd"
            and self.scenario in ("active", "dunning_recovered")
            and rng.random() < 0.6
        )
        items = [Item(story.ids.new("si"), price, quantity, self.t)]
        if self.metered:
            items.append(Item(story.ids.new("si"), prices.metered, None, self.t))
        self.sub = Subscription(
            story.ids.new("sub"),
            self.id,
            self.t,
            price.currency,
            "incomplete",
            items,
            self.t,
            self.t + period_of(price),
        )
        story.subscriptions.append(self.sub)

    # -- emitting -------------------------------------------------------------------------

    def api(self, at: int) -> str:
        """The API version the endpoint renders an event of `at` in."""
        return version_at(self.mode, at, UPGRADED_AT)

    def sub_event(self, at: int, kind: str, previous: Json | None = None) -> None:
        """Send a snapshot of the subscription as it is now."""
        api = self.api(at)
        self.story.emit(at, kind, self.sub.to_json(api), api, previous=previous)

    def invoice_event(self, at: int, kind: str, invoice: Invoice) -> None:
        """Send a snapshot of `invoice` as it is now."""
        api = self.api(at)
        self.story.emit(at, kind, invoice.to_json(api), api)

    def customer_event(self, at: int, kind: str, **changes: object) -> None:
        """Send a snapshot of the customer after `changes`."""
        previous = {key: self.customer[key] for key in changes} if changes else None
        self.customer.update(changes)
        self.story.emit(at, kind, copy.deepcopy(self.customer), self.api(at), previous=previous)

    def new_invoice(self, at: int, reason: str, start: int, end: int) -> Invoice:
        """A draft invoice for the licensed items over [start, end)."""
        invoice = Invoice(
            self.story.ids.new("in"),
            self.id,
            self.sub.id,
            reason,
            self.sub.currency,
            at,
            start,
            end,
        )
        for item in self.sub.items:
            if item.quantity is None:
                continue
            amount = (
                0
                if self.sub.status == "trialing"
                else (item.price.unit_amount or 0) * item.quantity
            )
            invoice.lines.append(
                Line(
                    self.story.ids.new("il"), item.price, item.quantity, amount, start, end, item.id
                )
            )
        self.story.invoices.append(invoice)
        self.sub.latest_invoice = invoice.id
        return invoice

    def finalize_and_pay(self, invoice: Invoice, at: int) -> None:
        """Finalize and collect at once: both events often share Stripe's second."""
        invoice.status, invoice.finalized_at = "open", at
        self.invoice_event(at, "invoice.finalized", invoice)
        self.pay(invoice, at)

    def pay(self, invoice: Invoice, at: int) -> None:
        """A successful payment attempt."""
        if invoice.total > 0:
            invoice.attempt_count += 1
        invoice.status, invoice.paid_at = "paid", at
        invoice.amount_paid, invoice.next_payment_attempt = invoice.total, None
        self.invoice_event(at, "invoice.paid", invoice)
        self.invoice_event(at, "invoice.payment_succeeded", invoice)

    def fail(self, invoice: Invoice, at: int, retry_in: int | None) -> None:
        """A failed payment attempt; `retry_in` None means the last one."""
        invoice.attempt_count += 1
        invoice.next_payment_attempt = None if retry_in is None else at + retry_in
        self.invoice_event(at, "invoice.payment_failed", invoice)

    # -- the month ------------------------------------------------------------------------

    def run(self) -> None:
        """Play this customer's scenario."""
        t = self.t
        self.customer_event(t, "customer.created")
        trial = self.scenario in ("trial", "late_trial")
        if trial:
            days = self.story.rng.choice((7, 14)) if self.scenario == "trial" else 30
            self.sub.status, self.sub.trial_start, self.sub.trial_end = (
                "trialing",
                t,
                t + days * DAY,
            )
            self.sub.period_end = self.sub.trial_end
        invoice = self.new_invoice(t, "subscription_create", t, self.sub.period_end)
        # Stripe's first invoice of a subscription covers no earlier period: both ends are
        # its creation (its lines carry the subscription's first period).
        invoice.period_start = invoice.period_end = t
        self.sub_event(t, "customer.subscription.created")
        self.invoice_event(t, "invoice.created", invoice)
        self.finalize_and_pay(invoice, t + 2)
        if not trial:
            self.sub.status = "active"
            self.sub_event(t + 2, "customer.subscription.updated", {"status": "incomplete"})
        handler = getattr(self, f"_{self.scenario}", None)
        if handler is not None:
            handler()
        elif self.sub.items[0].price.interval == "month" and not self.scenario.startswith("late"):
            self.renew(pays=True)

    def renew(self, *, pays: bool) -> Invoice:
        """The period ends: a new period, a cycle invoice (with metered usage), a charge."""
        start = self.sub.period_end
        end = start + period_of(self.sub.items[0].price)
        # What changed: the latest invoice, and the period where this era keeps it (on
        # the subscription before basil; on its items from then on).
        previous: Json = {"latest_invoice": self.sub.latest_invoice}
        if not is_new_era(self.api(start)):
            previous |= {
                "current_period_start": self.sub.period_start,
                "current_period_end": self.sub.period_end,
            }
        was_trial = self.sub.status == "trialing"
        old_start = self.sub.period_start
        self.sub.period_start, self.sub.period_end = start, end
        if was_trial:
            self.sub.status = "active"
            previous["status"] = "trialing"
        invoice = self.new_invoice(start, "subscription_cycle", start, end)
        invoice.period_start, invoice.period_end = old_start, start
        usage: Line | None = None
        if self.metered:
            billed = metered_month(
                self.story, self.id, old_start, start, end, finalized=start + HOUR
            )
            usage = Line(
                self.story.ids.new("il"),
                self.prices.metered,
                billed,
                (billed + 1) // 2,
                old_start,
                start,
                self.sub.items[1].id,
            )
            invoice.lines.append(usage)
        self.sub_event(start, "customer.subscription.updated", previous)
        self.invoice_event(start, "invoice.created", invoice)
        if pays:
            self.finalize_and_pay(invoice, start + HOUR)
            if usage is not None:
                credit_usage(self.story, invoice, usage, start + DAY, self.api(start + DAY))
        else:
            invoice.status, invoice.finalized_at = "open", start + HOUR
            self.invoice_event(start + HOUR, "invoice.finalized", invoice)
            self.fail(invoice, start + HOUR + 1, RETRY_DELAYS[0])
            self.customer_event(start + HOUR + 2, "customer.updated", delinquent=True)
            self.sub.status = "past_due"
            self.sub_event(start + HOUR + 2, "customer.subscription.updated", {"status": "active"})
        return invoice

    def _trial(self) -> None:
        self.renew(pays=True)

    def _dunning_recovered(self) -> None:
        invoice = self.renew(pays=False)
        at = invoice.finalized_at + RETRY_DELAYS[0] + 1  # type: ignore[operator]
        self.pay(invoice, at)
        self.customer_event(at + 1, "customer.updated", delinquent=False)
        self.sub.status = "active"
        self.sub_event(at + 1, "customer.subscription.updated", {"status": "past_due"})

    def _dunning_open(self) -> None:
        self.renew(pays=False)

    def _dunning_canceled(self) -> None:
        invoice = self.renew(pays=False)
        at = invoice.finalized_at + 1  # type: ignore[operator]
        for index, delay in enumerate(RETRY_DELAYS):
            at += delay
            self.fail(
                invoice, at, RETRY_DELAYS[index + 1] if index + 1 < len(RETRY_DELAYS) else None
            )
        invoice.status, invoice.uncollectible_at = "uncollectible", at + 1
        self.invoice_event(at + 1, "invoice.marked_uncollectible", invoice)
        self.sub.status, self.sub.canceled_at, self.sub.ended_at = "canceled", at + 1, at + 1
        self.sub.cancellation_reason = "payment_failed"
        self.sub_event(at + 1, "customer.subscription.deleted")

    def _canceled_metered(self) -> None:
        """Canceled at once mid-period without `invoice_now` (Stripe's default): the usage
        reported so far in the period is never invoiced."""
        at = self.sub.period_start + self.story.rng.randint(5, 12) * DAY
        unbilled_usage(self.story, self.id, self.sub.period_start, at)
        self.sub.status, self.sub.canceled_at, self.sub.ended_at = "canceled", at, at
        self.sub_event(at, "customer.subscription.deleted")

    def _request_cancel(self) -> int:
        at = self.t + self.story.rng.randint(1, 10) * DAY
        self.sub.cancel_at_period_end, self.sub.canceled_at = True, at
        self.sub_event(at, "customer.subscription.updated", {"cancel_at_period_end": False})
        return at

    def _cancel_at_period_end(self) -> None:
        self._request_cancel()
        self.sub.status, self.sub.ended_at = "canceled", self.sub.period_end
        self.sub_event(self.sub.period_end, "customer.subscription.deleted")

    def _late_cancel_requested(self) -> None:
        self._request_cancel()

    def _plan_change(self) -> None:
        at = self.t + self.story.rng.randint(5, 20) * DAY
        item = self.sub.items[0]
        old, new = item.price, self.prices.pro
        fraction_left = (self.sub.period_end - at) / (self.sub.period_end - self.sub.period_start)
        invoice = Invoice(
            self.story.ids.new("in"), self.id, self.sub.id, "subscription_update", "usd", at, at, at
        )
        invoice.lines = [
            Line(
                self.story.ids.new("il"),
                old,
                1,
                -round((old.unit_amount or 0) * fraction_left),
                at,
                self.sub.period_end,
                item.id,
                proration=True,
            ),
            Line(
                self.story.ids.new("il"),
                new,
                1,
                round((new.unit_amount or 0) * fraction_left),
                at,
                self.sub.period_end,
                item.id,
                proration=True,
            ),
        ]
        self.story.invoices.append(invoice)
        item.price, self.sub.latest_invoice = new, invoice.id
        self.sub_event(
            at,
            "customer.subscription.updated",
            {"items": {"data": [{"id": item.id, "price": old.to_json()}]}},
        )
        self.invoice_event(at, "invoice.created", invoice)
        self.finalize_and_pay(invoice, at + 1)
        self.renew(pays=True)
