"""What the read models must say once every event of a simulation is applied (pure)."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal
from typing import Any

from ingest.simulate.story import Story

MRR_STATUSES = ("active", "past_due")  # trialing pays nothing yet; canceled pays no more
# A pending period with usage is `unbilled` this long before the newest event (the view's).
UNBILLED_AFTER = 3 * 86_400


@dataclass(frozen=True, slots=True)
class InvoiceTotals:
    """Invoices of one status: how many, and their amounts in the minor unit."""

    count: int
    total: int
    amount_paid: int
    amount_remaining: int


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """One `meter_reconciliation` row."""

    customer: str
    meter: str
    period_start: int
    period_end: int
    reported_value: int
    rejected_value: int
    billed_quantity: int
    delta: int
    status: str
    credited_quantity: int = 0


@dataclass(frozen=True, slots=True)
class Balance:
    """One `connect_balances` row, in the minor unit."""

    transferred: int
    reversed: int
    application_fees: int
    refunded_fees: int
    paid_out: int
    net: int


@dataclass(frozen=True, slots=True)
class Expected:
    """The totals a correct set of projections shows for one simulation."""

    events: int
    accepted: int
    rejected: int
    usage_facts: int
    subscriptions: dict[str, int]
    invoices: dict[tuple[str, str], InvoiceTotals]  # (status, currency)
    mrr: dict[str, int]
    reconciliation: list[Reconciliation]
    balances: dict[tuple[str, str], Balance]
    customers: int = 0
    transfers: int = 0
    # The newest event or fact the meters projection's rows reflect: the view's clock.
    meters_clock: int = 0
    notes: list[str] = field(default_factory=list)
    # Row by row, the columns of each object the simulation made (see `object_rows`).
    objects: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)

    @property
    def discrepancies(self) -> list[Reconciliation]:
        """Closed periods where usage and billing disagree, and periods with usage and no
        invoice that ended over three days before the newest usage (`unbilled`), largest
        absolute delta first (as the view `usage_discrepancies`)."""
        judged = ("under_billed", "over_billed")
        ended = self.meters_clock - UNBILLED_AFTER
        rows = [row for row in self.reconciliation if row.status in judged] + [
            replace(row, status="unbilled")
            for row in self.reconciliation
            if row.status == "pending" and row.delta > 0 and row.period_end < ended
        ]
        return sorted(rows, key=lambda row: (-abs(row.delta), row.customer, row.period_start))

    @property
    def credited(self) -> list[Reconciliation]:
        """Periods a credit note gave units back for, by customer and period."""
        rows = [row for row in self.reconciliation if row.credited_quantity]
        return sorted(rows, key=lambda row: (row.customer, row.period_start))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form (for `lattice simulate --expected` and tests)."""
        body = asdict(self)
        del body[
            "objects"
        ]  # row by row, too long to print; `lattice simulate --check` compares them
        body["invoices"] = {
            f"{status}/{cur}": asdict(t) for (status, cur), t in self.invoices.items()
        }
        body["balances"] = {f"{acct}/{cur}": asdict(b) for (acct, cur), b in self.balances.items()}
        body["discrepancies"] = [asdict(row) for row in self.discrepancies]
        body["credited"] = [asdict(row) for row in self.credited]
        return body


def _status(kept: int, billed: int, credited: int, closed: bool) -> str:
    """As the `meters` projection judges a period (credit notes give units back)."""
    if not closed:
        return "pending"
    net = billed - credited
    if kept == net:
        return "matched"
    if kept > net:
        return "credited" if kept <= billed else "under_billed"
    return "over_billed"


def expected_totals(story: Story, *, accepted: int, rejected: int, events: int) -> Expected:
    """Compute the totals from the final state of every simulated object."""
    subscriptions = Counter(sub.status for sub in story.subscriptions)
    invoices: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for invoice in story.invoices:
        sums = invoices[(invoice.status, invoice.currency)]
        sums[0] += 1
        sums[1] += invoice.total
        sums[2] += invoice.amount_paid
        sums[3] += invoice.amount_remaining
    mrr: dict[str, int] = defaultdict(int)
    for sub in story.subscriptions:
        if sub.status not in MRR_STATUSES:
            continue
        for item in sub.items:
            if item.quantity is None or item.price.unit_amount is None:
                continue  # metered items bill usage in arrears: not recurring revenue
            monthly = item.price.unit_amount * item.quantity
            mrr[sub.currency] += monthly // 12 if item.price.interval == "year" else monthly
    rows = []
    for (customer, meter, start), (
        end,
        reported,
        rejected_value,
        billed,
        closed,
        credited,
    ) in sorted(story.usage.items()):
        kept = reported - rejected_value  # what Stripe accepted of it
        delta = kept - (billed - credited)
        rows.append(
            Reconciliation(
                customer,
                meter,
                start,
                end,
                reported,
                rejected_value,
                billed,
                delta,
                _status(kept, billed, credited, closed),
                credited,
            )
        )
    return Expected(
        events=events,
        accepted=accepted,
        rejected=rejected,
        usage_facts=len(story.facts),
        subscriptions=dict(sorted(subscriptions.items())),
        invoices={key: InvoiceTotals(*sums) for key, sums in sorted(invoices.items())},
        mrr=dict(sorted(mrr.items())),
        reconciliation=rows,
        balances=_balances(story),
        customers=len(story.subscriptions),
        transfers=len(story.transfers),
        meters_clock=_meters_clock(story),
        objects=object_rows(story),
    )


def object_rows(story: Story) -> dict[str, list[tuple[Any, ...]]]:
    """Each object's final state as its table's row, by table (times in Unix seconds),
    sorted: the columns where the API versions differ most (a subscription's period comes
    from its items since basil, an invoice's subscription from its `parent`, a line's price
    from its `pricing`), so that a projection misreading one version shows here even where
    the totals happen to agree."""
    rows: dict[str, list[tuple[Any, ...]]] = {
        "subscriptions": [
            (
                sub.id,
                sub.customer,
                sub.status,
                sub.period_start,
                sub.period_end,
                sub.trial_end,
                sub.canceled_at,
                sub.ended_at,
                sub.cancel_at_period_end,
                sub.latest_invoice,
            )
            for sub in story.subscriptions
        ],
        "subscription_items": [
            # Each item's period: on the subscription before basil, on the item since.
            (item.id, sub.id, item.price.id, item.quantity, sub.period_start, sub.period_end)
            for sub in story.subscriptions
            for item in sub.items
        ],
        "invoices": [
            (
                inv.id,
                inv.customer,
                inv.subscription,
                inv.status,
                inv.currency,
                inv.total,
                inv.amount_paid,
                inv.amount_remaining,
                inv.attempt_count,
                inv.paid_at,
                inv.billing_reason,
                inv.period_start,
                inv.period_end,
                inv.next_payment_attempt,
            )
            for inv in story.invoices
        ],
        "invoice_lines": [
            (
                line.id,
                inv.id,
                line.price.id,
                line.quantity,
                None if line.quantity is None else Decimal(line.quantity),
                line.amount,
                line.proration,
                line.period_start,
                line.period_end,
                inv.subscription,  # under `parent` since basil
            )
            for inv in story.invoices
            for line in inv.lines
        ],
        "transfers": [
            (
                t.id,
                t.destination,
                t.currency,
                t.amount,
                reversed_amount,
                t.source_transaction,
                t.transfer_group,
                reversed_amount == t.amount,
            )
            for t in story.transfers
            for reversed_amount in [sum(amount for _, amount, _ in t.reversals)]
        ],
    }
    return {table: sorted(found, key=lambda row: row[0]) for table, found in rows.items()}


# Invoice statuses whose metered lines the meters projection counts.
FINALIZED = frozenset({"open", "paid", "uncollectible", "void"})


def _meters_clock(story: Story) -> int:
    """The newest event or fact the `meters` projection's rows reflect (the clock of its
    view `usage_discrepancies`): usage facts, the meter's and its error reports' events,
    every event of a subscription with a metered item (each shows its period), finalized
    invoices with a metered line, and credit notes."""
    metered = {i.price.id for sub in story.subscriptions for i in sub.items if i.quantity is None}
    subscriptions = {
        sub.id for sub in story.subscriptions if any(i.price.id in metered for i in sub.items)
    }
    invoices = {
        inv.id for inv in story.invoices if any(line.price.id in metered for line in inv.lines)
    }
    newest = max((int(f.value["timestamp"]) for f in story.facts), default=0)
    for emitted in story.events:
        kind = str(emitted.body["type"])
        data = emitted.body.get("data")
        obj = data.get("object") if isinstance(data, dict) else None
        obj = obj if isinstance(obj, dict) else {}
        if (
            kind.startswith(("billing.meter.", "v1.billing.meter.", "credit_note."))
            or (kind.startswith("customer.subscription.") and obj.get("id") in subscriptions)
            or (
                kind.startswith("invoice.")
                and obj.get("id") in invoices
                and obj.get("status") in FINALIZED
            )
        ):
            newest = max(newest, emitted.created)
    return newest


def _balances(story: Story) -> dict[tuple[str, str], Balance]:
    sums: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for transfer in story.transfers:
        row = sums[(transfer.destination, transfer.currency)]
        row[0] += transfer.amount
        row[1] += sum(amount for _, amount, _ in transfer.reversals)
    for acct, currency, fee, refunded in story.fees:
        sums[(acct, currency)][2] += fee
        sums[(acct, currency)][3] += refunded
    for acct, currency, amount, status in story.payouts:
        if status == "paid":
            sums[(acct, currency)][4] += amount
    return {
        key: Balance(t, r, f, fr, p, t - r - f + fr - p)
        for key, (t, r, f, fr, p) in sorted(sums.items())
    }
