"""Pure: one Stripe event record -> the connect changes it implies.

Reads only what the event carries. Ledger entries come from the objects' own ids (a
transfer's `tr_`, a reversal's `trr_`, a fee's `fee_`); fee refunds and payouts are booked
by the store, which can see a refund's fee and a payout's whole history.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from projectors.base import PoisonRecord, Record
from projectors.connect import fields as f
from projectors.connect.changes import (
    AccountChange,
    AuthorizationChange,
    Change,
    ChargeChange,
    FeeChange,
    FeeRefundChange,
    LedgerEntry,
    PayoutChange,
    ReversalChange,
    TransferChange,
)
from projectors.connect.fields import Event

# Lifecycle order of a payout: a snapshot never moves a payout back to an earlier status.
PAYOUT_STATUS_RANK = {"pending": 0, "in_transit": 1, "paid": 2, "failed": 3, "canceled": 3}


def account_updated(ev: Event) -> list[Change]:
    """A connected account's snapshot; the platform's own account (no `account`) is skipped."""
    obj = ev.obj
    if ev.account is None:
        return []
    requirements = obj.get("requirements")
    req: Mapping[str, Any] = requirements if isinstance(requirements, dict) else {}
    return [
        AccountChange(
            id=f.text(obj, "id"),
            charges_enabled=f.opt_bool(obj, "charges_enabled"),
            payouts_enabled=f.opt_bool(obj, "payouts_enabled"),
            details_submitted=f.opt_bool(obj, "details_submitted"),
            requirements_currently_due=f.strings(req.get("currently_due")),
            requirements_past_due=f.strings(req.get("past_due")),
            disabled_reason=f.opt_text(req, "disabled_reason"),
            type=f.opt_text(obj, "type"),
            country=f.opt_text(obj, "country"),
            default_currency=f.opt_text(obj, "default_currency"),
            created=f.opt_moment(obj.get("created"), "account created"),
            livemode=ev.livemode,
            last_event_id=ev.id,
            last_event_created=ev.created,
        )
    ]


def _authorization(deauthorized: bool) -> Callable[[Event], list[Change]]:
    def reduce(ev: Event) -> list[Change]:
        # data.object is the platform's application; the account is the event's.
        if ev.account is None:
            raise PoisonRecord(f"event {ev.id}: an authorization event without `account`")
        return [
            AuthorizationChange(
                ev.account, deauthorized, f.opt_text(ev.obj, "id"), ev.id, ev.created
            )
        ]

    return reduce


def transfer(ev: Event, platform: str | None = None) -> list[Change]:
    """A transfer, its listed reversals, and their ledger entries. `platform`: the
    platform's own account id, when configured."""
    obj = ev.obj
    transfer_id = f.text(obj, "id")
    destination = f.ref(obj.get("destination"))
    if destination is None:
        raise PoisonRecord(f"transfer {transfer_id!r} has no destination")
    # A transfer on a connected account (its event names that `account`) is an account
    # debit: Stripe takes the money from that account to `destination`, the platform.
    debited = ev.account if ev.account is not None and ev.account != destination else None
    if debited is not None and platform is not None and destination != platform:
        # Not to the platform: that account pays a connected account of its own (it runs
        # a platform too). None of our money moves: skipped.
        return []
    currency = f.text(obj, "currency")
    amount = f.integer(obj, "amount")
    created = f.moment(obj.get("created"), f"transfer {transfer_id} created")
    kind, reversal_kind = ("debit", "debit_reversal") if debited else ("transfer", "reversal")
    side, sign = (debited, -1) if debited else (destination, 1)
    changes: list[Change] = [
        TransferChange(
            id=transfer_id,
            destination=destination,
            amount=amount,
            amount_reversed=f.opt_integer(obj, "amount_reversed") or 0,
            currency=currency,
            source_transaction=f.ref(obj.get("source_transaction")),
            source_type=f.opt_text(obj, "source_type"),
            transfer_group=f.opt_text(obj, "transfer_group"),
            reversed=obj.get("reversed") is True,
            destination_payment=f.ref(obj.get("destination_payment")),
            description=f.opt_text(obj, "description"),
            account=ev.account,
            livemode=ev.livemode,
            created=created,
            last_event_id=ev.id,
            last_event_created=ev.created,
        ),
        LedgerEntry(kind, transfer_id, side, currency, sign * amount, created, ev.id, ev.created),
    ]
    for rev in f.list_data(obj, "reversals"):
        rev_id = f.text(rev, "id")
        rev_amount = f.integer(rev, "amount")
        rev_currency = f.opt_text(rev, "currency") or currency
        rev_created = f.moment(rev.get("created"), f"reversal {rev_id} created")
        changes.append(
            ReversalChange(
                rev_id,
                transfer_id,
                rev_amount,
                rev_currency,
                f.ref(rev.get("source_refund")),
                rev_created,
                ev.id,
                ev.created,
            )
        )
        changes.append(
            LedgerEntry(
                reversal_kind,
                rev_id,
                side,
                rev_currency,
                -sign * rev_amount,
                rev_created,
                ev.id,
                ev.created,
            )
        )
    return changes


def charge(ev: Event) -> list[Change]:
    """A charge that moves money to or through a connected account; others are skipped."""
    obj = ev.obj
    transfer_data = obj.get("transfer_data")
    td: Mapping[str, Any] = transfer_data if isinstance(transfer_data, dict) else {}
    destination = f.ref(td.get("destination"))
    on_behalf_of = f.ref(obj.get("on_behalf_of"))
    transfer_group = f.opt_text(obj, "transfer_group")
    application_fee = f.ref(obj.get("application_fee"))
    if not (destination or on_behalf_of or transfer_group or application_fee or ev.account):
        return []
    charge_id = f.text(obj, "id")
    return [
        ChargeChange(
            id=charge_id,
            account=ev.account,
            amount=f.integer(obj, "amount"),
            amount_captured=f.opt_integer(obj, "amount_captured") or 0,
            amount_refunded=f.opt_integer(obj, "amount_refunded") or 0,
            currency=f.text(obj, "currency"),
            status=f.opt_text(obj, "status") or "unknown",
            refunded=obj.get("refunded") is True,
            destination=destination,
            transfer_amount=f.opt_integer(td, "amount"),
            on_behalf_of=on_behalf_of,
            transfer=f.ref(obj.get("transfer")),
            transfer_group=transfer_group,
            application_fee=application_fee,
            application_fee_amount=f.opt_integer(obj, "application_fee_amount"),
            livemode=ev.livemode,
            created=f.moment(obj.get("created"), f"charge {charge_id} created"),
            last_event_id=ev.id,
            last_event_created=ev.created,
        )
    ]


def application_fee(ev: Event) -> list[Change]:
    """An application fee, its listed refunds, and the fee's ledger entry. A fee event on a
    connected account (it carries `account`) is a fee that account collected from its own
    connected accounts as a platform: not ours, skipped (platform fees are the platform's)."""
    if ev.account is not None:
        return []
    obj = ev.obj
    fee_id = f.text(obj, "id")
    account = f.ref(obj.get("account"))
    if account is None:
        raise PoisonRecord(f"application fee {fee_id!r} has no account")
    currency = f.text(obj, "currency")
    amount = f.integer(obj, "amount")
    created = f.moment(obj.get("created"), f"application fee {fee_id} created")
    changes: list[Change] = [
        FeeChange(
            id=fee_id,
            account=account,
            amount=amount,
            amount_refunded=f.opt_integer(obj, "amount_refunded") or 0,
            currency=currency,
            charge=f.ref(obj.get("charge")),
            originating_transaction=f.ref(obj.get("originating_transaction")),
            application=f.ref(obj.get("application")),
            refunded=obj.get("refunded") is True,
            livemode=ev.livemode,
            created=created,
            last_event_id=ev.id,
            last_event_created=ev.created,
        ),
        LedgerEntry(
            "application_fee", fee_id, account, currency, -amount, created, ev.id, ev.created
        ),
    ]
    changes.extend(_fee_refund(refund, ev, fee_id) for refund in f.list_data(obj, "refunds"))
    return changes


def _fee_refund(obj: Mapping[str, Any], ev: Event, fee: str | None = None) -> FeeRefundChange:
    refund_id = f.text(obj, "id")
    fee_id = f.ref(obj.get("fee")) or fee
    if fee_id is None:
        raise PoisonRecord(f"fee refund {refund_id!r} has no fee")
    return FeeRefundChange(
        id=refund_id,
        fee=fee_id,
        amount=f.integer(obj, "amount"),
        currency=f.text(obj, "currency"),
        created=f.moment(obj.get("created"), f"fee refund {refund_id} created"),
        last_event_id=ev.id,
        last_event_created=ev.created,
    )


def fee_refund(ev: Event) -> list[Change]:
    """`application_fee.refund.updated`: the refund alone (its fee names the account); on a
    connected account, a refund of that account's own fee, skipped as its fee is."""
    if ev.account is not None:
        return []
    return [_fee_refund(ev.obj, ev)]


def payout(ev: Event) -> list[Change]:
    """A connected account's payout; the platform's own payouts (no `account`) are skipped."""
    obj = ev.obj
    if ev.account is None:
        return []
    payout_id = f.text(obj, "id")
    status = f.text(obj, "status")
    return [
        PayoutChange(
            id=payout_id,
            account=ev.account,
            amount=f.integer(obj, "amount"),
            currency=f.text(obj, "currency"),
            status=status,
            status_rank=PAYOUT_STATUS_RANK.get(status, 0),
            arrival_date=f.opt_moment(obj.get("arrival_date"), f"payout {payout_id} arrival_date"),
            failure_code=f.opt_text(obj, "failure_code"),
            failure_message=f.opt_text(obj, "failure_message"),
            method=f.opt_text(obj, "method"),
            automatic=f.opt_bool(obj, "automatic"),
            livemode=ev.livemode,
            created=f.moment(obj.get("created"), f"payout {payout_id} created"),
            paid_at=ev.created if status == "paid" else None,
            paid_event_id=ev.id if status == "paid" else None,
            failed_at=ev.created if status == "failed" else None,
            failed_event_id=ev.id if status == "failed" else None,
            last_event_id=ev.id,
            last_event_created=ev.created,
        )
    ]


REDUCERS: dict[str, Callable[[Event], list[Change]]] = {
    "account.updated": account_updated,
    "account.application.authorized": _authorization(False),
    "account.application.deauthorized": _authorization(True),
    "transfer.created": transfer,
    "transfer.updated": transfer,
    "transfer.reversed": transfer,
    "charge.succeeded": charge,
    "charge.captured": charge,
    "charge.refunded": charge,
    "charge.updated": charge,
    "application_fee.created": application_fee,
    "application_fee.refunded": application_fee,
    "application_fee.refund.updated": fee_refund,
    "payout.created": payout,
    "payout.updated": payout,
    "payout.paid": payout,
    "payout.failed": payout,
    "payout.canceled": payout,
}
EVENT_TYPES = frozenset(REDUCERS)


def reduce(record: Record, platform: str | None = None) -> Sequence[Change]:
    """The changes one record makes; [] for events this projection does not read.
    `platform`: the platform's own account id, when configured (it tells an account debit
    from a connected account's transfer to connected accounts of its own)."""
    event_type = record.header("stripe-event-type")
    # The header lets the common case (an event for another projection) skip JSON parsing.
    if event_type is not None and event_type not in EVENT_TYPES:
        return []
    event = record.json()
    event_type = event.get("type") if event_type is None else event_type
    reducer = REDUCERS.get(event_type) if isinstance(event_type, str) else None
    if reducer is None:
        return []
    if reducer is transfer:
        return transfer(Event(event), platform)
    return reducer(Event(event))
