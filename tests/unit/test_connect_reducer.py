"""The connect reducer: which changes each Stripe event makes (pure, no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from projectors.base import PoisonRecord
from projectors.connect import projection
from projectors.connect.changes import (
    AccountChange,
    AuthorizationChange,
    ChargeChange,
    FeeChange,
    FeeRefundChange,
    LedgerEntry,
    PayoutChange,
    ReversalChange,
    TransferChange,
)
from tests.fixtures.connect_objects import (
    account,
    application,
    application_fee,
    charge,
    fee_refund,
    payout,
    transfer,
    transfer_reversal,
)
from tests.fixtures.records import as_record
from tests.fixtures.stripe_objects import T0, event, subscription


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def test_transfer_with_reversals_gives_rows_and_ledger_entries() -> None:
    r1 = transfer_reversal(transfer="tr_1", amount=300, created=T0 + 5)
    tr = transfer(
        id="tr_1",
        destination="acct_A",
        amount=1000,
        reversals=[r1],
        source_transaction="ch_1",
        transfer_group="G1",
    )
    evt = event("transfer.reversed", tr, created=T0 + 9)

    changes = projection.reduce(as_record(evt))

    [row] = [c for c in changes if isinstance(c, TransferChange)]
    assert (row.destination, row.amount, row.amount_reversed, row.reversed) == (
        "acct_A",
        1000,
        300,
        False,
    )
    assert (row.source_transaction, row.transfer_group, row.last_event_id) == (
        "ch_1",
        "G1",
        evt["id"],
    )
    assert row.last_event_created == at(T0 + 9)
    [rev] = [c for c in changes if isinstance(c, ReversalChange)]
    assert (rev.id, rev.transfer, rev.amount, rev.created) == (r1["id"], "tr_1", 300, at(T0 + 5))
    entries = {
        (e.kind, e.source_id): (e.account, e.amount) for e in changes if isinstance(e, LedgerEntry)
    }
    assert entries == {
        ("transfer", "tr_1"): ("acct_A", 1000),
        ("reversal", r1["id"]): ("acct_A", -300),
    }


def test_destination_given_as_expanded_object_is_read() -> None:
    tr = dict(
        transfer(destination="-", amount=10), destination={"id": "acct_X", "object": "account"}
    )
    changes = projection.reduce(as_record(event("transfer.created", tr)))
    assert {c.destination for c in changes if isinstance(c, TransferChange)} == {"acct_X"}


def test_destination_charge_links_its_transfer() -> None:
    ch = charge(
        amount=900,
        destination="acct_D",
        transfer="tr_9",
        transfer_amount=800,
        on_behalf_of="acct_D",
    )
    [row] = projection.reduce(as_record(event("charge.succeeded", ch)))
    assert isinstance(row, ChargeChange)
    assert (row.destination, row.transfer, row.transfer_amount, row.on_behalf_of) == (
        "acct_D",
        "tr_9",
        800,
        "acct_D",
    )
    assert row.account is None


def test_direct_charge_takes_its_account_from_the_event() -> None:
    ch = charge(amount=900, application_fee="fee_1", application_fee_amount=90)
    [row] = projection.reduce(as_record(event("charge.succeeded", ch, account="acct_C")))
    assert isinstance(row, ChargeChange)
    assert (row.account, row.application_fee, row.application_fee_amount) == ("acct_C", "fee_1", 90)


def test_plain_platform_charge_is_not_connect() -> None:
    assert projection.reduce(as_record(event("charge.succeeded", charge(amount=100)))) == []


def test_application_fee_with_refunds() -> None:
    fr = fee_refund(fee="fee_1", amount=40, created=T0 + 3)
    fee = application_fee(id="fee_1", account="acct_C", amount=100, charge="ch_1", refunds=[fr])
    changes = projection.reduce(as_record(event("application_fee.refunded", fee)))
    [row] = [c for c in changes if isinstance(c, FeeChange)]
    assert (row.account, row.amount, row.amount_refunded, row.refunded) == (
        "acct_C",
        100,
        40,
        False,
    )
    [refund] = [c for c in changes if isinstance(c, FeeRefundChange)]
    assert (refund.id, refund.fee, refund.amount) == (fr["id"], "fee_1", 40)
    # The refund's ledger entry is booked by the store, which joins it to its fee.
    assert [(e.kind, e.amount) for e in changes if isinstance(e, LedgerEntry)] == [
        ("application_fee", -100)
    ]


def test_fee_refund_update_alone() -> None:
    fr = fee_refund(fee="fee_2", amount=10)
    [refund] = projection.reduce(as_record(event("application_fee.refund.updated", fr)))
    assert isinstance(refund, FeeRefundChange)
    assert (refund.fee, refund.amount) == ("fee_2", 10)


@pytest.mark.parametrize(
    "event_type",
    ["application_fee.created", "application_fee.refunded", "application_fee.refund.updated"],
)
def test_a_fee_event_on_a_connected_account_is_that_accounts_own_and_skipped(
    event_type: str,
) -> None:
    """A connected account that runs a platform of its own collects fees from its own
    connected accounts; our Connect endpoint receives those events with its `account`.
    Booked, they would charge an account that is not ours (the fee's `account`)."""
    fr = fee_refund(fee="fee_3", amount=10, created=T0 + 3)
    fee = application_fee(
        id="fee_3", account="acct_Theirs", amount=100, charge="ch_3", refunds=[fr]
    )
    obj = fr if event_type.endswith("refund.updated") else fee
    assert projection.reduce(as_record(event(event_type, obj, account="acct_Ours"))) == []
    # The same event on the platform is booked: the skip is the `account`'s doing.
    assert projection.reduce(as_record(event(event_type, obj))) != []


def test_connected_payout_records_when_it_was_paid() -> None:
    po = payout(amount=500, status="paid")
    evt = event("payout.paid", po, created=T0 + 7, account="acct_P")
    [row] = projection.reduce(as_record(evt))
    assert isinstance(row, PayoutChange)
    assert (row.account, row.status, row.paid_event_id, row.paid_at, row.failed_at) == (
        "acct_P",
        "paid",
        evt["id"],
        at(T0 + 7),
        None,
    )


def test_platform_payout_is_skipped() -> None:
    assert projection.reduce(as_record(event("payout.paid", payout(amount=1, status="paid")))) == []


def test_an_organizations_context_is_not_a_connect_account() -> None:
    """An Organization's endpoint names in `context` the account each event came from,
    the platform's own included, and the receiver puts it in the `stripe-account` header:
    neither makes a platform event a connected account's."""
    org = "acct_1Sibling"
    tr = transfer(id="tr_org", destination="acct_A", amount=1100)
    record = as_record(event("transfer.created", tr, context=org))
    assert record.header("stripe-account") == org
    entries = [c for c in projection.reduce(record) if isinstance(c, LedgerEntry)]
    assert [(e.kind, e.account, e.amount) for e in entries] == [("transfer", "acct_A", 1100)]

    for platform_own in (
        event("payout.paid", payout(amount=500, status="paid"), context=org),
        event("account.updated", account(id=org), context=org),
        event("charge.succeeded", charge(amount=2000), context=org),
    ):
        assert projection.reduce(as_record(platform_own)) == [], platform_own["type"]


def test_account_updated_reads_requirements() -> None:
    acct = account(
        id="acct_R",
        payouts_enabled=False,
        currently_due=["external_account"],
        disabled_reason="requirements.past_due",
    )
    [row] = projection.reduce(as_record(event("account.updated", acct, account="acct_R")))
    assert isinstance(row, AccountChange)
    assert (row.payouts_enabled, row.requirements_currently_due, row.disabled_reason) == (
        False,
        ("external_account",),
        "requirements.past_due",
    )


def test_platform_account_update_is_skipped() -> None:
    assert projection.reduce(as_record(event("account.updated", account()))) == []


def test_deauthorization_names_the_event_account() -> None:
    app = application()
    evt = event("account.application.deauthorized", app, account="acct_Z")
    assert projection.reduce(as_record(evt)) == [
        AuthorizationChange("acct_Z", True, app["id"], evt["id"], at(T0))
    ]


def test_other_events_are_ignored() -> None:
    assert (
        projection.reduce(as_record(event("customer.subscription.updated", subscription()))) == []
    )


@pytest.mark.parametrize(
    ("evt", "message"),
    [
        (
            event("transfer.created", dict(transfer(destination="acct_A", amount=1), amount="ten")),
            "amount",
        ),
        (
            event(
                "transfer.created", dict(transfer(destination="acct_A", amount=1), destination=None)
            ),
            "destination",
        ),
        (event("payout.paid", dict(payout(amount=1), created="soon"), account="acct_A"), "created"),
        (event("account.application.deauthorized", application()), "account"),
    ],
)
def test_malformed_events_are_poison(evt: dict[str, object], message: str) -> None:
    with pytest.raises(PoisonRecord, match=message):
        projection.reduce(as_record(evt))
