"""Reading the Stripe objects the meters projection needs, in both API-version shapes (pure).

Before basil (2025-03-31) a subscription carries `current_period_*` and an invoice line
carries its `price` object; since basil the periods are on subscription items and a line
names its price under `pricing.price_details.price`.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from projectors.invoices.reducer import invoice_subscription
from projectors.meters.changes import (
    Change,
    CreditNoteLineSeen,
    CreditNoteSeen,
    InvoiceLineSeen,
    InvoiceSeen,
    PeriodSeen,
    PriceMeter,
)
from projectors.price_meter import meter_of_price
from schemas.envelope import rfc3339_moment

# Statuses of one invoice that share a `created` second are ordered by how far along they are.
INVOICE_RANK = {"draft": 0, "open": 1, "paid": 2, "uncollectible": 2, "void": 3, "deleted": 4}


def id_of(value: Any) -> str | None:
    """The id of a Stripe reference that is either an id string or an expanded object."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, Mapping):
        inner = value.get("id")
        if isinstance(inner, str) and inner:
            return inner
    return None


def unix_seconds(value: Any) -> int | None:
    """Unix seconds from an integer or an RFC 3339 string (thin events); None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        moment = rfc3339_moment(value)
        return None if moment is None else int(moment.timestamp())
    return None


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list_data(value: Any) -> list[Mapping[str, Any]]:
    data = _map(value).get("data")
    if not isinstance(data, list):
        return []
    return [item for item in data if isinstance(item, Mapping)]


def subscription_changes(sub: Mapping[str, Any], event_id: str, created: int) -> list[Change]:
    """Price -> meter links and the current period of every metered item."""
    customer, subscription = id_of(sub.get("customer")), id_of(sub.get("id"))
    # Canceled mid-period, a subscription keeps its items' period; its usage ends here.
    ended = unix_seconds(sub.get("ended_at"))
    changes: list[Change] = []
    for item in _list_data(sub.get("items")):
        price = id_of(item.get("price")) or id_of(item.get("plan"))
        meter = meter_of_price(item.get("price"), item.get("plan"))
        if price is None or meter is None:
            continue
        changes.append(PriceMeter(price, meter, event_id, created))
        # Basil moved the period from the subscription onto each item: read both.
        start = unix_seconds(item.get("current_period_start"))
        end = unix_seconds(item.get("current_period_end"))
        if start is None or end is None:
            start = unix_seconds(sub.get("current_period_start"))
            end = unix_seconds(sub.get("current_period_end"))
        if ended is not None and end is not None:
            end = min(end, ended)
        if customer is not None and start is not None and end is not None and end > start:
            changes.append(
                PeriodSeen(
                    customer, price, start, end, event_id, created, ended is not None, subscription
                )
            )
    return changes


def _line_price(line: Mapping[str, Any]) -> str | None:
    legacy = id_of(line.get("price")) or id_of(line.get("plan"))
    if legacy is not None:
        return legacy
    return id_of(_map(_map(line.get("pricing")).get("price_details")).get("price"))


def _amount(line: Mapping[str, Any]) -> int | None:
    amount = line.get("amount")
    return amount if type(amount) is int else None


def _quantity(line: Mapping[str, Any]) -> Decimal | None:
    raw = line.get("quantity_decimal")
    if raw is None:
        raw = line.get("quantity")
    if raw is None or isinstance(raw, bool):
        return None
    try:
        return Decimal(str(raw))
    except InvalidOperation:
        return None


def invoice_changes(
    invoice: Mapping[str, Any], event_type: str, event_id: str, created: int
) -> list[Change]:
    """The invoice's status and every priced line with its period and quantity."""
    invoice_id = id_of(invoice.get("id"))
    customer = id_of(invoice.get("customer"))
    if invoice_id is None or customer is None:
        return []
    status = "deleted" if event_type == "invoice.deleted" else str(invoice.get("status") or "")
    rank = INVOICE_RANK.get(status, 0)
    seen = InvoiceSeen(
        invoice_id,
        customer,
        status,
        rank,
        event_id,
        created,
        lines_complete=_all_lines(invoice.get("lines")),
        period_start=unix_seconds(invoice.get("period_start")),
        period_end=unix_seconds(invoice.get("period_end")),
    )
    changes: list[Change] = [seen]
    billed = invoice_subscription(invoice)  # for lines that do not name theirs
    for line in _list_data(invoice.get("lines")):
        # Keyed with its invoice: before 2019-12-03 a line's `id` repeats across invoices,
        # never within one (the invoices projection reads `unique_id` for that reason).
        found = id_of(line.get("id"))
        price = _line_price(line)
        quantity = _quantity(line)
        period = _map(line.get("period"))
        start, end = unix_seconds(period.get("start")), unix_seconds(period.get("end"))
        if found is None or price is None or quantity is None or start is None or end is None:
            continue
        legacy_meter = meter_of_price(line.get("price"), line.get("plan"))
        if legacy_meter is not None:
            changes.append(PriceMeter(price, legacy_meter, event_id, created))
        elif isinstance(line.get("price"), Mapping):
            continue  # a legacy line whose price is known not to be metered
        changes.append(
            InvoiceLineSeen(
                invoice_id,
                found,
                customer,
                price,
                quantity,
                start,
                end,
                event_id,
                created,
                rank,
                _amount(line),
            )
        )
        if end > start:
            subscription = _line_subscription(line) or billed
            changes.append(
                PeriodSeen(customer, price, start, end, event_id, created, False, subscription)
            )
    return changes


def _line_subscription(line: Mapping[str, Any]) -> str | None:
    """A line's subscription: on the line before basil, under its `parent` since."""
    details = _map(_map(line.get("parent")).get("subscription_item_details"))
    return id_of(line.get("subscription")) or id_of(details.get("subscription"))


def credit_note_changes(
    note: Mapping[str, Any], event_type: str, event_id: str, created: int
) -> list[Change]:
    """The credit note's status and each of its lines that credits an invoice line (a
    `custom_line_item` credits no usage). A line credits units when it names a `quantity`;
    a line created with an `amount` instead (Stripe leaves its `quantity` null) credits
    money that cannot be turned into units: it is kept with no quantity."""
    note_id = id_of(note.get("id"))
    invoice = id_of(note.get("invoice"))
    customer = id_of(note.get("customer"))
    if note_id is None or invoice is None or customer is None:
        return []
    # Not `voided_at`: Stripe's own example of an issued note carries one.
    voided = note.get("status") == "void" or event_type == "credit_note.voided"
    changes: list[Change] = [
        CreditNoteSeen(
            note_id, invoice, customer, voided, event_id, created, _all_lines(note.get("lines"))
        )
    ]
    for line in _list_data(note.get("lines")):
        line_id = id_of(line.get("id"))
        credited = id_of(line.get("invoice_line_item"))
        if line.get("type") != "invoice_line_item" or line_id is None or credited is None:
            continue
        changes.append(
            CreditNoteLineSeen(
                note_id,
                line_id,
                invoice,
                credited,
                _quantity(line),
                _amount(line),
                event_id,
                created,
            )
        )
    return changes


def _all_lines(lines: Any) -> bool:
    """False when a list of lines says it carries only its first page (`has_more`)."""
    return not (isinstance(lines, Mapping) and lines.get("has_more") is True)
