"""The changes the meters reducer emits: plain frozen dataclasses, one per input fact.

Each is idempotent and carries its own ordering key, so the store can apply any
permutation or duplication of them and end in the same tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

# A price bills a meter (from subscription items and legacy invoice lines); the invoices
# projection learns the same links.
from projectors.price_meter import PriceMeter as PriceMeter


@dataclass(frozen=True, slots=True)
class UsageReported:
    """The app reported (or, with `cancel`, cancelled) the fact named `identifier`."""

    identifier: str
    event_name: str
    customer: str
    value: Decimal
    timestamp: int
    cancel: bool
    received: int | None = None  # Unix seconds its record reached the log


@dataclass(frozen=True, slots=True)
class MeterSeen:
    """A `billing.meter` snapshot."""

    id: str
    event_name: str
    display_name: str | None
    status: str
    aggregation: str
    event_id: str
    created: int
    # `hour` or `day` for a meter fed pre-aggregated usage (the newest event sent in each
    # window counts), else None.
    event_time_window: str | None = None


@dataclass(frozen=True, slots=True)
class PeriodSeen:
    """A billing period of a customer's price, from a subscription item or an invoice line."""

    customer: str
    price: str
    period_start: int
    period_end: int
    event_id: str
    created: int
    ended: bool = False  # from a subscription that has ended: final within its second
    subscription: str | None = None  # the subscription it belongs to, when known


@dataclass(frozen=True, slots=True)
class InvoiceSeen:
    """An invoice snapshot: who, which status; `rank` orders statuses of one `created`.
    `lines_complete` is false when the body did not carry every line (`lines.has_more`):
    a metered line for the invoice's period may be among those not seen."""

    id: str
    customer: str
    status: str
    rank: int
    event_id: str
    created: int
    lines_complete: bool = True
    period_start: int | None = None
    period_end: int | None = None


@dataclass(frozen=True, slots=True)
class InvoiceLineSeen:
    """A line of an invoice snapshot that has a price (maybe metered), and its `amount`
    in the minor unit."""

    invoice: str
    line: str
    customer: str
    price: str
    quantity: Decimal
    period_start: int
    period_end: int
    event_id: str
    created: int
    rank: int
    amount: int | None = None


@dataclass(frozen=True, slots=True)
class CreditNoteSeen:
    """A credit note snapshot. Once issued, its lines never change and `void` is final, so
    `voided` only ever turns true. `lines_complete` is false when the body did not carry
    every line (`lines.has_more`); a snapshot that did makes it true for good."""

    id: str
    invoice: str
    customer: str
    voided: bool
    event_id: str
    created: int
    lines_complete: bool = True


@dataclass(frozen=True, slots=True)
class CreditNoteLineSeen:
    """A line of a credit note that credits an invoice line: `quantity` units of it, or
    an amount only (`quantity` None, or an `amount` that is not what `quantity` units cost
    on the line: not units, so it cannot be subtracted from them)."""

    credit_note: str
    line: str
    invoice: str
    invoice_line: str
    quantity: Decimal | None
    amount: int | None
    event_id: str
    created: int


@dataclass(frozen=True, slots=True)
class FactRejected:
    """Stripe's error report names this meter-event identifier among its samples."""

    identifier: str
    code: str
    message: str | None
    event_id: str
    created: int


@dataclass(frozen=True, slots=True)
class ErrorReport:
    """One meter error report: how many errors, how many Stripe sampled, over which window."""

    event_id: str
    type: str
    meter: str | None
    error_count: int
    sampled: int
    validation_start: int | None
    validation_end: int | None
    summary: str | None
    created: int


Change = (
    UsageReported
    | MeterSeen
    | PriceMeter
    | PeriodSeen
    | InvoiceSeen
    | InvoiceLineSeen
    | CreditNoteSeen
    | CreditNoteLineSeen
    | FactRejected
    | ErrorReport
)
