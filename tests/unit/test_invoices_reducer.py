"""The invoices reducer reads every invoice event, in both API shapes, and orders
snapshots as the README says."""

from __future__ import annotations

from decimal import Decimal

import pytest

from projectors.base import PoisonRecord
from projectors.invoices import projection
from projectors.invoices.prices import PriceMeter
from projectors.invoices.reducer import INVOICE_EVENTS, InvoiceSnapshot, PaymentSnapshot
from projectors.subscriptions.snapshot import newest, supersedes
from tests.fixtures import stripe_objects as so
from tests.fixtures.records import as_record

ERAS: tuple[so.Era, ...] = ("legacy", "basil")


def reduce_invoice(event: dict[str, object]) -> InvoiceSnapshot:
    """The invoice snapshot of `event` (the price -> meter links its lines show follow it)."""
    change, *links = projection.reduce(as_record(event))
    assert isinstance(change, InvoiceSnapshot)
    assert all(isinstance(link, PriceMeter) for link in links)
    return change


# Written out, not taken from the reducer: a type dropped there must fail here.
EVERY_INVOICE_EVENT = (
    "invoice.created",
    "invoice.deleted",
    "invoice.finalization_failed",
    "invoice.finalized",
    "invoice.marked_uncollectible",
    "invoice.overdue",
    "invoice.paid",
    "invoice.payment_action_required",
    "invoice.payment_failed",
    "invoice.payment_succeeded",
    "invoice.updated",
    "invoice.voided",
    "invoice.will_be_due",
)


def test_the_reducer_handles_every_invoice_event() -> None:
    assert set(EVERY_INVOICE_EVENT) == INVOICE_EVENTS


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("event_type", EVERY_INVOICE_EVENT)
def test_every_invoice_event_in_both_shapes_gives_the_snapshot(
    era: so.Era, event_type: str
) -> None:
    metered = so.price(unit_amount=5, meter="mtr_1")
    usage = so.invoice_line(
        era=era,
        subscription="sub_1",
        subscription_item="si_1",
        line_price=metered,
        quantity=1200,
        proration=True,
    )
    inv = so.invoice(
        era=era,
        status="paid",
        customer="cus_A",
        subscription="sub_1",
        lines=[usage],
        paid_at=so.T0 + 7,
        attempt_count=1,
        billing_reason="subscription_cycle",
    )

    change = reduce_invoice(so.event(event_type, inv, era=era, account="acct_1"))

    assert (change.id, change.customer, change.account) == (inv["id"], "cus_A", "acct_1")
    assert (change.subscription, change.status, change.billing_reason) == (
        "sub_1",
        "paid",
        "subscription_cycle",
    )
    assert (change.total, change.amount_due, change.amount_paid) == (6000, 6000, 6000)
    assert (change.amount_remaining, change.attempt_count) == (0, 1)
    assert change.paid_at == so.T0 + 7
    assert (change.period_start, change.period_end) == (so.T0, so.T0 + so.MONTH)
    assert change.deleted is (event_type == "invoice.deleted")
    assert change.lines_complete
    (line,) = change.lines
    assert (line.id, line.subscription, line.subscription_item) == (usage["id"], "sub_1", "si_1")
    assert (line.price, line.product) == (metered["id"], metered["product"])
    assert (line.quantity, line.amount, line.proration) == (1200, 6000, True)
    assert (line.period_start, line.period_end) == (so.T0, so.T0 + so.MONTH)
    # Before basil a line carries the whole price, meter included (kept as a link for the
    # price's later lines); since, only its id.
    assert line.meter == ("mtr_1" if era == "legacy" else None)
    evt = so.event(event_type, inv, era=era)
    links = projection.reduce(as_record(evt))[1:]
    shown = PriceMeter(metered["id"], "mtr_1", evt["id"], evt["created"])
    assert links == ([shown] if era == "legacy" else [])


@pytest.mark.parametrize("era", ERAS)
def test_prices_shown_whole_link_their_meter(era: so.Era) -> None:
    """A subscription's items show their prices whole, in both shapes, as price and plan
    events do: each metered one is a link; a licensed price is none."""
    metered = so.price(unit_amount=None, meter="mtr_1")
    licensed = so.price()
    sub = so.subscription(
        era=era,
        items=[so.subscription_item(era=era, item_price=p) for p in (metered, licensed)],
    )
    for event_type in ("customer.subscription.created", "customer.subscription.deleted"):
        evt = so.event(event_type, sub, era=era)
        assert projection.reduce(as_record(evt)) == [
            PriceMeter(metered["id"], "mtr_1", evt["id"], evt["created"])
        ]
    evt = so.event("price.created", metered, era=era)
    assert projection.reduce(as_record(evt)) == [
        PriceMeter(metered["id"], "mtr_1", evt["id"], evt["created"])
    ]
    assert projection.reduce(as_record(so.event("price.updated", licensed, era=era))) == []


@pytest.mark.parametrize("era", ERAS)
def test_lines_beyond_the_first_page_mark_the_invoice_incomplete(era: so.Era) -> None:
    inv = so.invoice(era=era, has_more=True, lines=[so.invoice_line(era=era) for _ in range(3)])

    change = reduce_invoice(so.event("invoice.finalized", inv, era=era))

    assert not change.lines_complete
    assert len(change.lines) == 3


def test_a_basil_line_is_read_from_the_details_its_parent_type_names() -> None:
    """Stripe's own example line is an invoice item's and still carries a filled
    `subscription_item_details` branch: only the branch `parent.type` names counts."""
    line = so.invoice_line(era="basil", proration=False)
    line["parent"]["subscription_item_details"] = {
        "invoice_item": None,
        "proration": True,
        "proration_details": {"credited_items": None},
        "subscription": "sub_other",
        "subscription_item": "si_other",
    }
    bad_type = so.invoice_line(era="basil")
    bad_type["parent"]["type"] = {"not": "a name"}
    change = reduce_invoice(
        so.event("invoice.finalized", so.invoice(era="basil", lines=[line, bad_type]))
    )

    read, unread = change.lines
    assert (read.subscription_item, read.proration) == (None, False)
    assert (unread.subscription_item, unread.proration) == (None, None)


@pytest.mark.parametrize(
    ("quantity", "quantity_decimal", "exact"),
    [
        (2, "2.5", Decimal("2.5")),  # fractional units: `quantity` is cut to a whole one
        (3, None, Decimal(3)),  # Stripe's own example line: no decimal, the quantity
        (1, "NaN", Decimal(1)),  # not a number Stripe would send: the whole one
        (None, None, None),
    ],
)
def test_a_lines_exact_quantity_is_its_quantity_decimal(
    quantity: int | None, quantity_decimal: str | None, exact: Decimal | None
) -> None:
    line = so.invoice_line(era="basil")
    line["quantity"], line["quantity_decimal"] = quantity, quantity_decimal
    (read,) = reduce_invoice(so.event("invoice.paid", so.invoice(era="basil", lines=[line]))).lines
    assert (read.quantity, read.quantity_decimal) == (quantity, exact)


def test_lines_of_api_versions_before_2019_12_03_are_keyed_by_their_unique_id() -> None:
    """Then a subscription line's `id` (`sli_…`) came back on every invoice of the
    subscription, and `unique_id` held the line's own `il_` id: keyed by `id`, each
    month's invoice would take the line from the month before."""
    metered = so.price(unit_amount=2000)
    months = []
    for n in range(2):
        line = so.invoice_line(
            era="legacy", line_price=metered, id="sli_1Repeated", unique_id=f"il_month{n}"
        )
        inv = so.invoice(era="legacy", customer="cus_A", status="paid", lines=[line])
        months.append(so.event("invoice.paid", inv, era="legacy", api_version="2019-10-08"))
    read = [reduce_invoice(evt) for evt in months]
    assert [[line.id for line in r.lines] for r in read] == [["il_month0"], ["il_month1"]]


def test_an_invoice_without_a_subscription_has_none() -> None:
    for era in ERAS:
        change = reduce_invoice(so.event("invoice.created", so.invoice(era=era), era=era))
        assert change.subscription is None


@pytest.mark.parametrize("era", ERAS)
def test_upcoming_invoices_never_make_a_row(era: so.Era) -> None:
    preview = so.invoice(era=era, status="draft", subscription="sub_1")
    del preview["id"]  # Stripe's upcoming invoice has no id: it does not exist yet

    assert projection.reduce(as_record(so.event("invoice.upcoming", preview, era=era))) == []


@pytest.mark.parametrize(
    ("earlier", "later"),
    [
        ("draft", "open"),
        ("open", "paid"),
        ("open", "void"),
        ("open", "uncollectible"),
        ("uncollectible", "paid"),
        ("uncollectible", "void"),
        ("draft", "paid"),
    ],
)
def test_within_one_second_the_later_lifecycle_state_wins(earlier: str, later: str) -> None:
    inv_id = so.new_id("in")
    first = reduce_invoice(so.event("invoice.updated", so.invoice(id=inv_id, status=earlier)))
    second = reduce_invoice(so.event("invoice.updated", so.invoice(id=inv_id, status=later)))

    assert supersedes(second.version, first.version)
    assert not supersedes(first.version, second.version)


def test_a_newer_failed_attempt_overwrites_an_older_one() -> None:
    inv_id = so.new_id("in")
    first = reduce_invoice(
        so.event("invoice.payment_failed", so.invoice(id=inv_id, status="open", attempt_count=1))
    )
    second = reduce_invoice(
        so.event(
            "invoice.payment_failed",
            so.invoice(id=inv_id, status="open", attempt_count=2),
            created=so.T0 + 86_400,
        )
    )

    assert supersedes(second.version, first.version)


def test_within_one_second_and_state_the_snapshot_further_along_wins() -> None:
    """Finalized, then its first charge failed, in one second: both `open`, and the event
    ids (drawn so that they lean the wrong way) say nothing about which came later."""
    inv_id = so.new_id("in")
    created = reduce_invoice(
        so.event("invoice.created", so.invoice(id=inv_id, status="open"), id="evt_1zzz")
    )
    finalized = reduce_invoice(
        so.event(
            "invoice.finalized",
            so.invoice(id=inv_id, status="open", attempt_count=0),
            id="evt_1yyy",
        )
    )
    failed = reduce_invoice(
        so.event(
            "invoice.payment_failed",
            so.invoice(id=inv_id, status="open", attempt_count=1),
            id="evt_1aaa",
        )
    )

    assert supersedes(finalized.version, created.version)
    assert supersedes(failed.version, finalized.version)
    # The attempts count first: a first snapshot that already shows an attempt is later.
    tried = reduce_invoice(
        so.event("invoice.created", so.invoice(id=inv_id, status="open", attempt_count=1))
    )
    assert supersedes(tried.version, finalized.version)
    assert newest([failed, finalized, created]) == newest([created, finalized, failed]) == [failed]


@pytest.mark.parametrize("arrival", [("legacy", "basil"), ("basil", "legacy")])
def test_one_event_in_two_api_shapes_keeps_the_newer_shape(arrival: tuple[so.Era, so.Era]) -> None:
    """During an API upgrade one event can reach the log from two endpoints, one per
    shape: duplicates must not make the row depend on which copy came first."""
    inv_id = so.new_id("in")
    copies = [
        reduce_invoice(
            so.event(
                "invoice.paid",
                so.invoice(era=era, id=inv_id, status="paid"),
                era=era,
                id="evt_1same",
            )
        )
        for era in arrival
    ]

    (kept,) = newest(copies)
    assert kept.version.endswith(so.API_VERSIONS["basil"])


@pytest.mark.parametrize(
    "deleted", [so.invoice(id="in_D"), {"id": "in_D", "object": "invoice", "deleted": True}]
)
def test_a_deleted_draft_is_never_brought_back(deleted: dict[str, object]) -> None:
    gone = reduce_invoice(so.event("invoice.deleted", deleted))
    late = reduce_invoice(
        so.event("invoice.updated", so.invoice(id="in_D", status="draft"), created=so.T0 + 60)
    )

    assert gone.deleted
    assert not supersedes(late.version, gone.version)


def test_invoice_payment_paid_gives_the_payment() -> None:
    payment = so.invoice_payment(invoice="in_P", amount=4900, paid_at=so.T0 + 9)

    (change,) = projection.reduce(as_record(so.event("invoice_payment.paid", payment)))

    assert isinstance(change, PaymentSnapshot)
    assert (change.invoice, change.status, change.amount_paid) == ("in_P", "paid", 4900)
    assert change.paid_at == so.T0 + 9


@pytest.mark.parametrize(
    "event",
    [
        so.event("customer.subscription.updated", so.subscription()),
        so.event("invoiceitem.created", {"id": "ii_1", "object": "invoiceitem"}),
        so.event("charge.succeeded", {"id": "ch_1", "object": "charge"}),
    ],
)
def test_other_events_make_no_change(event: dict[str, object]) -> None:
    assert projection.reduce(as_record(event)) == []


def test_an_invoice_event_without_an_invoice_id_is_poison() -> None:
    broken = so.invoice()
    del broken["id"]

    with pytest.raises(PoisonRecord, match="in_"):
        projection.reduce(as_record(so.event("invoice.paid", broken)))
