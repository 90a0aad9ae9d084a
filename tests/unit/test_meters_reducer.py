"""The meters reducer (pure): which changes each kind of record makes, in both API eras."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from deploy.settings import Settings
from projectors.base import PoisonRecord, Record
from projectors.meters import projection
from projectors.meters.changes import (
    CreditNoteLineSeen,
    CreditNoteSeen,
    ErrorReport,
    FactRejected,
    InvoiceLineSeen,
    InvoiceSeen,
    MeterSeen,
    PeriodSeen,
    PriceMeter,
    UsageReported,
)
from tests.fixtures.stripe_objects import (
    MONTH,
    T0,
    Era,
    credit_note,
    credit_note_line,
    customer,
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


def test_a_usage_fact_becomes_one_change() -> None:
    """With the time its record reached the log (the record's timestamp)."""
    record = dataclasses.replace(
        usage_record(usage_fact("req-1", "cus_1", "0.1", timestamp=T0)),
        timestamp_ms=(T0 + 60) * 1000 + 999,
    )
    assert projection.reduce(record) == [
        UsageReported(
            "req-1", "api_requests", "cus_1", Decimal("0.1"), T0, cancel=False, received=T0 + 60
        )
    ]


def test_a_usage_fact_timed_in_milliseconds_is_poison_saying_so() -> None:
    record = usage_record(usage_fact("req-1", "cus_1", "1", timestamp=1_764_000_000_000))
    with pytest.raises(PoisonRecord, match=r"milliseconds\?"):
        projection.reduce(record)


def test_a_cancel_names_the_fact_it_cancels() -> None:
    record = usage_record(usage_fact("req-1", "cus_1", 0, action="cancel"))
    (change,) = projection.reduce(record)
    assert isinstance(change, UsageReported)
    assert change.cancel


def test_an_invalid_usage_fact_is_poison_with_the_validation_error() -> None:
    record = usage_record({"identifier": "req-1", "value": "lots"})
    with pytest.raises(PoisonRecord, match=r"value: .*must be a plain decimal"):
        projection.reduce(record)


@pytest.mark.parametrize("kind", ["created", "updated", "deactivated", "reactivated"])
def test_meter_events_give_the_meter(kind: str) -> None:
    meter = billing_meter(meter_id="mtr_1", event_name="logins", formula="count")
    if kind == "deactivated":
        meter["status"] = "inactive"
    evt = meter_event(meter, kind=kind, created=T0)
    assert projection.reduce(stripe_record(evt)) == [
        MeterSeen("mtr_1", "logins", "API requests", meter["status"], "count", evt["id"], T0)
    ]


@pytest.mark.parametrize(
    ("given", "kept"),
    [("hour", "hour"), ("day", "day"), (None, None), ("week", None), ([], None), ({}, None)],
)
def test_a_meters_time_window_is_hour_day_or_none(given: object, kept: str | None) -> None:
    """Stripe sends `hour`, `day` or null; anything else (a body mangled on the way) is
    no window, never a crash of the reducer."""
    meter = dict(billing_meter(), event_time_window=given)
    (change,) = projection.reduce(stripe_record(meter_event(meter)))
    assert isinstance(change, MeterSeen)
    assert change.event_time_window == kept


def test_a_meter_with_an_unknown_formula_is_poison() -> None:
    meter = billing_meter(formula="max")
    with pytest.raises(PoisonRecord, match="'max' is not sum, count or last"):
        projection.reduce(stripe_record(meter_event(meter)))


@pytest.mark.parametrize("era", ["legacy", "basil"])
def test_a_subscription_gives_its_metered_items_periods(era: str) -> None:
    metered = price(meter="mtr_1", unit_amount=None)
    licensed = price()
    sub = subscription(
        era=era,  # type: ignore[arg-type]
        customer="cus_1",
        items=[
            subscription_item(era=era, item_price=metered),  # type: ignore[arg-type]
            subscription_item(era=era, item_price=licensed),  # type: ignore[arg-type]
        ],
    )
    evt = event("customer.subscription.updated", sub, created=T0 + 5)
    assert projection.reduce(stripe_record(evt)) == [
        PriceMeter(metered["id"], "mtr_1", evt["id"], T0 + 5),
        PeriodSeen(
            "cus_1", metered["id"], T0, T0 + MONTH, evt["id"], T0 + 5, subscription=sub["id"]
        ),
    ]


@pytest.mark.parametrize("era", ["legacy", "basil"])
def test_a_subscription_canceled_mid_period_ends_its_period_there(era: str) -> None:
    """Its items keep the whole period; the usage after `ended_at` belongs to whatever
    replaced it, never to this period as well."""
    metered = price(meter="mtr_1", unit_amount=None)
    ended = T0 + 9 * 86_400
    sub = subscription(
        era=era,  # type: ignore[arg-type]
        customer="cus_1",
        status="canceled",
        items=[subscription_item(era=era, item_price=metered)],  # type: ignore[arg-type]
        canceled_at=ended,
        ended_at=ended,
    )
    evt = event("customer.subscription.deleted", sub, created=ended)
    assert projection.reduce(stripe_record(evt))[1] == PeriodSeen(
        "cus_1", metered["id"], T0, ended, evt["id"], ended, ended=True, subscription=sub["id"]
    )


def test_a_legacy_line_names_its_meter_and_a_basil_line_only_its_price() -> None:
    metered = price(meter="mtr_1", unit_amount=None)
    legacy = invoice(
        era="legacy",
        status="open",
        customer="cus_1",
        lines=[
            invoice_line(era="legacy", line_price=metered, quantity=4),
            invoice_line(era="legacy"),
        ],
    )
    evt = event("invoice.finalized", legacy, created=T0 + 9, era="legacy")
    line_id = legacy["lines"]["data"][0]["id"]
    assert projection.reduce(stripe_record(evt)) == [
        InvoiceSeen(legacy["id"], "cus_1", "open", 1, evt["id"], T0 + 9, True, T0, T0 + MONTH),
        PriceMeter(metered["id"], "mtr_1", evt["id"], T0 + 9),
        InvoiceLineSeen(
            legacy["id"],
            line_id,
            "cus_1",
            metered["id"],
            Decimal(4),
            T0,
            T0 + MONTH,
            evt["id"],
            T0 + 9,
            1,
            0,  # the line's amount: 4 units of a price without a unit amount
        ),
        PeriodSeen("cus_1", metered["id"], T0, T0 + MONTH, evt["id"], T0 + 9),
    ]
    basil = invoice(
        era="basil",
        status="paid",
        customer="cus_1",
        lines=[invoice_line(era="basil", line_price=metered, quantity=4)],
    )
    changes = projection.reduce(stripe_record(event("invoice.paid", basil, created=T0 + 9)))
    assert [type(c) for c in changes] == [InvoiceSeen, InvoiceLineSeen, PeriodSeen]
    assert isinstance(changes[1], InvoiceLineSeen)
    assert changes[1].price == metered["id"]


@pytest.mark.parametrize("era", ["legacy", "basil"])
def test_a_credit_note_credits_units_of_invoice_lines_or_an_amount_only(era: Era) -> None:
    units = credit_note_line(era=era, invoice_line_item="il_usage", quantity=4, amount=400)
    money = credit_note_line(era=era, invoice_line_item="il_usage", quantity=None, amount=250)
    custom = credit_note_line(era=era, invoice_line_item=None, amount=500)
    note = credit_note(
        era=era, invoice="in_1", customer="cus_1", lines=[units, money, custom], created=T0
    )
    evt = event("credit_note.created", note, created=T0 + 5, era=era)
    assert projection.reduce(stripe_record(evt)) == [
        CreditNoteSeen(note["id"], "in_1", "cus_1", False, evt["id"], T0 + 5),
        CreditNoteLineSeen(
            note["id"], units["id"], "in_1", "il_usage", Decimal(4), 400, evt["id"], T0 + 5
        ),
        CreditNoteLineSeen(
            note["id"], money["id"], "in_1", "il_usage", None, 250, evt["id"], T0 + 5
        ),
    ]
    # Stripe's example of an issued note carries `voided_at`; only the status voids it.
    voided = event("credit_note.voided", dict(note, status="void"), created=T0 + 9)
    updated = event("credit_note.updated", dict(note, voided_at=T0), created=T0 + 7)
    assert [
        change.voided
        for evt in (voided, updated)
        for change in projection.reduce(stripe_record(evt))
        if isinstance(change, CreditNoteSeen)
    ] == [True, False]


def test_a_deleted_draft_ranks_above_every_status() -> None:
    draft = invoice(status="draft", customer="cus_1")
    (seen, *_) = projection.reduce(stripe_record(event("invoice.deleted", draft)))
    assert isinstance(seen, InvoiceSeen)
    assert (seen.status, seen.rank) == ("deleted", 4)


def test_a_hydrated_error_report_rejects_its_samples_and_keeps_the_count() -> None:
    evt = error_report(identifiers=["a", "b"], meter="mtr_1", extra_errors=3, at=T0)
    changes = projection.reduce(stripe_record(evt))
    assert [c.identifier for c in changes if isinstance(c, FactRejected)] == ["a", "b"]
    report = changes[-1]
    assert isinstance(report, ErrorReport)
    assert (report.meter, report.error_count, report.sampled) == ("mtr_1", 5, 2)
    assert (report.validation_start, report.validation_end, report.created) == (T0 - 3600, T0, T0)


@pytest.mark.parametrize(
    ("error_types", "sample_errors"), [(True, None), (5, None), ({"a": 1}, None), (None, True)]
)
def test_a_report_whose_lists_are_not_lists_keeps_its_count(
    error_types: object, sample_errors: object
) -> None:
    """Found by the guided fuzzer: `sample_errors: true` raised TypeError, so the runner
    dead-lettered the whole report (after its retries), error count included."""
    evt = error_report(identifiers=["a"], meter="mtr_1", extra_errors=3, at=T0)
    reason = evt["data"]["reason"]
    if error_types is None:
        reason["error_types"][0]["sample_errors"] = sample_errors
    else:
        reason["error_types"] = error_types
    (report,) = projection.reduce(stripe_record(evt))
    assert isinstance(report, ErrorReport)
    assert (report.error_count, report.sampled) == (4, 0)  # one sampled + three counted


def test_no_meter_found_has_no_meter() -> None:
    evt = error_report(identifiers=["a"], meter=None, code="no_meter")
    changes = projection.reduce(stripe_record(evt))
    assert isinstance(changes[0], FactRejected)
    assert changes[0].code == "no_meter"
    assert isinstance(changes[1], ErrorReport)
    assert changes[1].meter is None
    assert changes[1].type == "v1.billing.meter.no_meter_found"


def test_a_thin_event_that_was_not_hydrated_is_poison() -> None:
    evt = error_report(identifiers=["a"], meter="mtr_1", hydrated=False)
    with pytest.raises(PoisonRecord, match="was not hydrated from GET /v2/core/events/"):
        projection.reduce(stripe_record(evt))


def test_events_the_projection_does_not_read_change_nothing() -> None:
    assert projection.reduce(stripe_record(event("customer.created", customer()))) == []


def test_a_stripe_record_that_is_not_json_is_poison() -> None:
    record = stripe_record(event("customer.created", customer()))
    broken = Record(
        record.topic, 0, 0, record.key, b"{not json", record.headers, record.timestamp_ms
    )
    with pytest.raises(PoisonRecord, match="not JSON"):
        projection.reduce(broken)


def test_a_stripe_event_without_the_receivers_headers_is_read_as_one() -> None:
    """A dead letter sent again by hand (a console producer writes no headers) is the
    event it was, not a usage fact missing its fields; a record that is neither is still
    judged as a fact."""
    inv = invoice(status="paid", customer="cus_1", subscription="sub_1")
    record = stripe_record(event("invoice.paid", inv, created=T0 + MONTH))
    bare = dataclasses.replace(record, headers={})
    assert projection.reduce(bare) == projection.reduce(record) != []

    with pytest.raises(PoisonRecord, match="identifier"):
        projection.reduce(dataclasses.replace(bare, value=b'{"object": "invoice"}'))
    # A fact is a fact, whatever extra field it carries (the model ignores them).
    fact = dict(usage_fact("req-1", "cus_1", 3), object="event")
    (change,) = projection.reduce(usage_record(fact))
    assert isinstance(change, UsageReported)
    assert change.value == 3


def test_the_projection_reads_both_topics_and_asks_for_hydration() -> None:
    settings = Settings(topic="t.events", usage_topic="t.usage")
    assert list(projection.topics(settings)) == ["t.events", "t.usage"]
    assert projection.hydrate_thin_events is True


@pytest.mark.parametrize("era", ["legacy", "basil"])
def test_a_lines_period_names_its_subscription_in_either_shape(era: str) -> None:
    """On the line before basil, under its `parent` since; else the invoice's own."""
    metered = price(meter="mtr_1", unit_amount=None)
    own = invoice_line(era=era, line_price=metered, subscription="sub_line")  # type: ignore[arg-type]
    bare = invoice_line(
        era=era,  # type: ignore[arg-type]
        line_price=metered,
        period_start=T0 + MONTH,
        period_end=T0 + 2 * MONTH,
    )
    inv = invoice(
        era=era,  # type: ignore[arg-type]
        status="open",
        customer="cus_1",
        subscription="sub_invoice",
        lines=[own, bare],
    )
    evt = event("invoice.finalized", inv, created=T0 + 9, era=era)  # type: ignore[arg-type]
    periods = [c for c in projection.reduce(stripe_record(evt)) if isinstance(c, PeriodSeen)]
    assert [p.subscription for p in periods] == ["sub_line", "sub_invoice"]


def test_a_plain_value_too_long_for_a_numeric_column_is_poison_not_a_failed_batch() -> None:
    """The fast path takes plain digits; one no `numeric` column holds would fail the
    batch's INSERT (and be dead-lettered only after the batch is retried record by
    record): the model refuses it first, naming why."""
    record = usage_record(usage_fact("req-1", "cus_1", "0." + "0" * 16383 + "1"))
    with pytest.raises(PoisonRecord, match=r"at most 131072 digits before the point"):
        projection.reduce(record)
    fine = usage_record(usage_fact("req-2", "cus_1", "0." + "0" * 200 + "1"))
    (change,) = projection.reduce(fine)
    assert isinstance(change, UsageReported)
    assert change.value == Decimal("1e-201")
