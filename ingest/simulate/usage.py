"""Metered usage: facts the app reports, Stripe's error reports, and what gets billed."""

from __future__ import annotations

import random

from ingest.simulate.billing_shapes import Invoice, Line
from ingest.simulate.shapes import Ids, Json, is_new_era, rfc3339, thin_event
from ingest.simulate.story import DAY, HOUR, Story, UsageTruth

ERROR_REPORT = "v1.billing.meter.error_report_triggered"
EVENT_NAME = "api_requests"
CREDITED_SHARE = 0.3  # of paid usage lines, given a few units back by a credit note


def _fact(
    story: Story, customer: str, identifier: str, value: int, at: int, action: str | None = None
) -> Json:
    # Producers send the value as a string or a number: the contract allows both.
    fact: Json = {
        "identifier": identifier,
        "event_name": EVENT_NAME,
        "stripe_customer_id": customer,
        "value": str(value) if story.rng.random() < 0.5 else value,
        "timestamp": at,
    }
    if action is not None:
        fact["action"] = action
    return fact


def metered_month(
    story: Story, customer: str, start: int, end: int, next_end: int, *, finalized: int
) -> int:
    """Report a period's usage and the first days of the next; return what Stripe bills.

    Each fact is one of: billed as reported; reported twice (an app retry: Stripe and the
    projection deduplicate by identifier); cancelled by an adjustment; rejected by Stripe
    (an error report names it); reported only after the invoice was finalized (never
    billed: under-billed). Rarely, a fact reached Stripe but never the topic (over-billed).
    """
    rng, meter = story.rng, story.meter_id
    reported = billed = late = lost = 0
    rejections: list[tuple[str, int]] = []
    for _ in range(rng.randint(4, 12)):
        identifier = story.ids.new("mev")
        value = rng.randint(1, 40)
        at = rng.randint(start, end - HOUR)
        kind = rng.choices(["ok", "twice", "cancel", "reject", "late"], [70, 10, 6, 7, 7])[0]
        reported_at = finalized + rng.randint(HOUR, 2 * DAY) if kind == "late" else at + 5
        story.report(reported_at, customer, _fact(story, customer, identifier, value, at))
        if kind == "cancel":
            story.report(
                reported_at + 600, customer, _fact(story, customer, identifier, value, at, "cancel")
            )
            continue
        reported += value
        if kind == "twice":
            story.report(reported_at + 30, customer, _fact(story, customer, identifier, value, at))
        if kind == "reject":
            rejections.append((identifier, value))
            reported += _same_fault_again(story, customer, identifier, value, at, rejections)
        elif kind == "late":
            late += value
        else:
            billed += value
    if rng.random() < 0.08:
        lost = rng.randint(1, 10)  # a fact the app sent Stripe but lost before logging it
        billed += lost
    # What the projection can count as rejected: the facts the reports' samples name.
    rejected = _error_report(story, rejections, start, end) if rejections else 0
    story.usage[(customer, meter, start)] = [end, reported, rejected, billed, True, 0]
    unsampled = sum(value for _, value in rejections) - rejected
    story.truth[(customer, meter, start)] = UsageTruth(late, lost, unsampled)
    upcoming = 0
    for _ in range(rng.randint(1, 3)):  # the new period has begun: its row stays pending
        value, at = rng.randint(1, 20), rng.randint(end, end + 3 * DAY)
        story.report(at + 5, customer, _fact(story, customer, story.ids.new("mev"), value, at))
        upcoming += value
    story.usage[(customer, meter, end)] = [next_end, upcoming, 0, 0, False, 0]
    return billed


def _same_fault_again(
    story: Story,
    customer: str,
    identifier: str,
    value: int,
    at: int,
    rejections: list[tuple[str, int]],
) -> int:
    """Half the time a rejected fact has a twin a second later (the app's fault repeats:
    Stripe rejects both); returns its value, or 0. Drawn from a generator of its own, so
    that the rest of a seeded month stays as it was."""
    rng = random.Random(identifier)
    if rng.random() >= 0.5:
        return 0
    twin = Ids(rng).new("mev")
    fact: Json = {
        "identifier": twin,
        "event_name": EVENT_NAME,
        "stripe_customer_id": customer,
        "value": value,
        "timestamp": at + 1,
    }
    story.report(at + 6, customer, fact)
    rejections.append((twin, value))
    return value


def unbilled_usage(story: Story, customer: str, start: int, ended: int) -> None:
    """Usage of a period its subscription left early, canceled without a final invoice:
    reported, and never billed."""
    rng = story.rng
    reported = 0
    for _ in range(rng.randint(2, 6)):
        value, at = rng.randint(1, 30), rng.randint(start, ended - HOUR)
        story.report(at + 5, customer, _fact(story, customer, story.ids.new("mev"), value, at))
        reported += value
    story.usage[(customer, story.meter_id, start)] = [ended, reported, 0, 0, False, 0]


def credit_usage(story: Story, invoice: Invoice, line: Line, at: int, api_version: str) -> None:
    """Sometimes support gives a few units of a paid usage line back by a credit note (a
    spike the customer disputed): its period is `credited`, or `under_billed` by more.
    Decided and named by a generator of its own, seeded by the invoice, so that a seeded
    month's customers, invoices and facts are what they were before credit notes were
    simulated (its delivery order, drawn once per event, does shift)."""
    rng = random.Random(invoice.id)
    if line.quantity < 1 or rng.random() >= CREDITED_SHARE:
        return
    units = rng.randint(1, min(line.quantity, 5))
    amount = line.amount * units // line.quantity
    ids = Ids(rng)
    note_id, line_id = ids.new("cn"), ids.new("cnli")
    credited: Json = {
        "id": line_id,
        "object": "credit_note_line_item",
        "amount": amount,
        "description": f"{units} x {line.price.product} (usage credit)",
        "discount_amount": 0,
        "discount_amounts": [],
        "invoice_line_item": line.id,
        "livemode": False,
        "quantity": units,
        "tax_rates": [],
        "type": "invoice_line_item",
        "unit_amount": None,
        "unit_amount_decimal": None,
        "pretax_credit_amounts": [],
    }
    note: Json = {
        "id": note_id,
        "object": "credit_note",
        "amount": amount,
        "amount_shipping": 0,
        "created": at,
        "currency": invoice.currency,
        "customer": invoice.customer,
        "customer_balance_transaction": None,
        "discount_amount": 0,
        "discount_amounts": [],
        "effective_at": at,
        "invoice": invoice.id,
        "lines": {
            "object": "list",
            "data": [credited],
            "has_more": False,
            "url": f"/v1/credit_notes/{note_id}/lines",
        },
        "livemode": False,
        "memo": "Usage spike credited back",
        "metadata": {},
        "number": f"{invoice.id[-8:].upper()}-CN-01",
        "out_of_band_amount": None,
        "pdf": f"https://pay.stripe.com/credit_notes/{note_id}/pdf",
        "reason": "order_change",
        "shipping_cost": None,
        "status": "issued",
        "subtotal": amount,
        "subtotal_excluding_tax": amount,
        "total": amount,
        "total_excluding_tax": amount,
        "type": "post_payment",
        "voided_at": None,
        "pretax_credit_amounts": [],
    }
    if is_new_era(api_version):
        credited |= {"taxes": [], "metadata": {}}
        note |= {
            "customer_account": None,
            "post_payment_amount": amount,
            "pre_payment_amount": 0,
            "refunds": [],
            "total_taxes": [],
        }
    else:
        credited |= {
            "amount_excluding_tax": amount,
            "tax_amounts": [],
            "unit_amount_excluding_tax": str(amount),
        }
        note |= {"refund": None, "tax_amounts": []}
    story.emit(at, "credit_note.created", note, api_version, event_id=ids.new("evt"))
    story.usage[(invoice.customer, story.meter_id, line.period_start)][5] += units


def _error_report(story: Story, rejections: list[tuple[str, int]], start: int, end: int) -> int:
    """Thin error reports for the rejected facts, four at most each. Stripe lists only
    samples of the errors it counts: about half the reports of several errors leave one
    out, which no projection can tie to its customer (`unattributed_rejections`). Returns
    the value of the facts the samples name. (Whether a report leaves one out is drawn
    from a generator of its own, so that the rest of a seeded month stays as it was.)"""
    named_value = 0
    for first in range(0, len(rejections), 4):
        batch = rejections[first : first + 4]
        leaves_out = len(batch) > 1 and random.Random(batch[0][0]).random() < 0.5
        named = batch[:-1] if leaves_out else batch
        named_value += sum(value for _, value in named)
        created = end - HOUR // 2
        thin = thin_event(story.ids.new("evt_test"), ERROR_REPORT, created, story.meter_id)
        samples = [
            {
                "error_message": "Value exceeds the limit configured for this meter",
                "request": {"identifier": identifier},
            }
            for identifier, _ in named
        ]
        hydrated = dict(thin)
        hydrated["data"] = {
            "developer_message_summary": f"{len(batch)} meter events failed validation",
            "reason": {
                "error_count": len(batch),
                "error_types": [
                    {
                        "code": "meter_event_invalid_value",
                        "error_count": len(batch),
                        "sample_errors": samples,
                    }
                ],
            },
            "validation_start": rfc3339(start),
            "validation_end": rfc3339(created),
        }
        story.emit_thin(created, thin, hydrated)
    return named_value
