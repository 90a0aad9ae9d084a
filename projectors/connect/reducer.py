"""Pure: one Stripe event record -> the connect changes it implies.

Reads only what the event carries. Ledger entries come from the objects' own ids (a
transfer's `tr_`, a reversal's `trr_`, a fee's `fee_`); fee refunds and payouts are booked
by the store, which can see a refund's fee and a payout's whole history.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from projectors.base import PoisonRecord, Record
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

# Lifecycle order of a payout: a snapshot never moves a payout back to an earlier status.
PAYOUT_STATUS_RANK = {"pending": 0, "in_transit": 1, "paid": 2, "failed": 3, "canceled": 3}


class _Event:
    """The envelope fields every change needs."""

    __slots__ = ("account", "created", "id", "livemode", "obj")

    def __init__(self, event: Mapping[str, Any], record: Record) -> None:
        event_id = event.get("id")
        if not isinstance(event_id, str) or not event_id:
            raise PoisonRecord("event has no id")
        self.id = event_id
        self.created = _time(event.get("created"), f"event {event_id} created")
        data = event.get("data")
        obj = data.get("object") if isinstance(data, dict) else None
        if not isinstance(obj, dict):
            raise PoisonRecord(f"event {event_id} has no data.object (a thin event?)")
        self.obj: Mapping[str, Any] = obj
        account = event.get("account")
        self.account = (
            account if isinstance(account, str) and account else record.header("stripe-account")
        )
        self.livemode = event.get("livemode") is True


def _time(value: Any, what: str) -> datetime:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PoisonRecord(f"{what} is not Unix seconds: {value!r}")
    return datetime.fromtimestamp(value, UTC)


def _opt_time(value: Any, what: str) -> datetime | None:
    return None if value is None else _time(value, what)


# Parsed JSON objects are dicts: checking `dict`, not the `Mapping` ABC, is measurably
# cheaper on the hot path.
def _ref(value: Any) -> str | None:
    """An expandable field: an id, an expanded object's id, or None."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, dict):
        inner = value.get("id")
        return inner if isinstance(inner, str) and inner else None
    return None


def _str(obj: Mapping[str, Any], field: str) -> str:
    value = obj.get(field)
    if not isinstance(value, str) or not value:
        raise PoisonRecord(f"{obj.get('object')} {obj.get('id')!r} has no {field}")
    return value


def _opt_str(obj: Mapping[str, Any], field: str) -> str | None:
    value = obj.get(field)
    return value if isinstance(value, str) and value else None


def _int(obj: Mapping[str, Any], field: str) -> int:
    value = obj.get(field)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PoisonRecord(f"{obj.get('object')} {obj.get('id')!r}: {field} is not an integer")
    return value


def _opt_int(obj: Mapping[str, Any], field: str) -> int | None:
    value = obj.get(field)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _opt_bool(obj: Mapping[str, Any], field: str) -> bool | None:
    value = obj.get(field)
    return value if isinstance(value, bool) else None


def _list_data(obj: Mapping[str, Any], field: str) -> list[Mapping[str, Any]]:
    listing = obj.get(field)
    data = listing.get("data") if isinstance(listing, dict) else None
    return [item for item in data or () if isinstance(item, dict)]


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(sorted(v for v in value if isinstance(v, str))) if isinstance(value, list) else ()


def account_updated(ev: _Event) -> list[Change]:
    """A connected account's snapshot; the platform's own account (no `account`) is skipped."""
    obj = ev.obj
    if ev.account is None:
        return []
    requirements = obj.get("requirements")
    req: Mapping[str, Any] = requirements if isinstance(requirements, dict) else {}
    return [
        AccountChange(
            id=_str(obj, "id"),
            charges_enabled=_opt_bool(obj, "charges_enabled"),
            payouts_enabled=_opt_bool(obj, "payouts_enabled"),
            details_submitted=_opt_bool(obj, "details_submitted"),
            requirements_currently_due=_strings(req.get("currently_due")),
            requirements_past_due=_strings(req.get("past_due")),
            disabled_reason=_opt_str(req, "disabled_reason"),
            type=_opt_str(obj, "type"),
            country=_opt_str(obj, "country"),
            default_currency=_opt_str(obj, "default_currency"),
            created=_opt_time(obj.get("created"), "account created"),
            livemode=ev.livemode,
            last_event_id=ev.id,
            last_event_created=ev.created,
        )
    ]


def _authorization(deauthorized: bool) -> Callable[[_Event], list[Change]]:
    def reduce(ev: _Event) -> list[Change]:
        # data.object is the platform's application; the account is the event's.
        if ev.account is None:
            raise PoisonRecord(f"event {ev.id}: an authorization event without `account`")
        return [
            AuthorizationChange(ev.account, deauthorized, _opt_str(ev.obj, "id"), ev.id, ev.created)
        ]

    return reduce


def transfer(ev: _Event) -> list[Change]:
    """A transfer, its listed reversals, and their ledger entries."""
    obj = ev.obj
    transfer_id = _str(obj, "id")
    destination = _ref(obj.get("destination"))
    if destination is None:
        raise PoisonRecord(f"transfer {transfer_id!r} has no destination")
    currency = _str(obj, "currency")
    amount = _int(obj, "amount")
    created = _time(obj.get("created"), f"transfer {transfer_id} created")
    changes: list[Change] = [
        TransferChange(
            id=transfer_id,
            destination=destination,
            amount=amount,
            amount_reversed=_opt_int(obj, "amount_reversed") or 0,
            currency=currency,
            source_transaction=_ref(obj.get("source_transaction")),
            source_type=_opt_str(obj, "source_type"),
            transfer_group=_opt_str(obj, "transfer_group"),
            reversed=obj.get("reversed") is True,
            destination_payment=_ref(obj.get("destination_payment")),
            description=_opt_str(obj, "description"),
            account=ev.account,
            livemode=ev.livemode,
            created=created,
            last_event_id=ev.id,
            last_event_created=ev.created,
        ),
        LedgerEntry(
            "transfer", transfer_id, destination, currency, amount, created, ev.id, ev.created
        ),
    ]
    for rev in _list_data(obj, "reversals"):
        rev_id = _str(rev, "id")
        rev_amount = _int(rev, "amount")
        rev_currency = _opt_str(rev, "currency") or currency
        rev_created = _time(rev.get("created"), f"reversal {rev_id} created")
        changes.append(
            ReversalChange(
                rev_id,
                transfer_id,
                rev_amount,
                rev_currency,
                _ref(rev.get("source_refund")),
                rev_created,
                ev.id,
                ev.created,
            )
        )
        changes.append(
            LedgerEntry(
                "reversal",
                rev_id,
                destination,
                rev_currency,
                -rev_amount,
                rev_created,
                ev.id,
                ev.created,
            )
        )
    return changes


def charge(ev: _Event) -> list[Change]:
    """A charge that moves money to or through a connected account; others are skipped."""
    obj = ev.obj
    transfer_data = obj.get("transfer_data")
    td: Mapping[str, Any] = transfer_data if isinstance(transfer_data, dict) else {}
    destination = _ref(td.get("destination"))
    on_behalf_of = _ref(obj.get("on_behalf_of"))
    transfer_group = _opt_str(obj, "transfer_group")
    application_fee = _ref(obj.get("application_fee"))
    if not (destination or on_behalf_of or transfer_group or application_fee or ev.account):
        return []
    charge_id = _str(obj, "id")
    return [
        ChargeChange(
            id=charge_id,
            account=ev.account,
            amount=_int(obj, "amount"),
            amount_captured=_opt_int(obj, "amount_captured") or 0,
            amount_refunded=_opt_int(obj, "amount_refunded") or 0,
            currency=_str(obj, "currency"),
            status=_opt_str(obj, "status") or "unknown",
            refunded=obj.get("refunded") is True,
            destination=destination,
            transfer_amount=_opt_int(td, "amount"),
            on_behalf_of=on_behalf_of,
            transfer=_ref(obj.get("transfer")),
            transfer_group=transfer_group,
            application_fee=application_fee,
            application_fee_amount=_opt_int(obj, "application_fee_amount"),
            livemode=ev.livemode,
            created=_time(obj.get("created"), f"charge {charge_id} created"),
            last_event_id=ev.id,
            last_event_created=ev.created,
        )
    ]


def application_fee(ev: _Event) -> list[Change]:
    """An application fee, its listed refunds, and the fee's ledger entry."""
    obj = ev.obj
    fee_id = _str(obj, "id")
    account = _ref(obj.get("account"))
    if account is None:
        raise PoisonRecord(f"application fee {fee_id!r} has no account")
    currency = _str(obj, "currency")
    amount = _int(obj, "amount")
    created = _time(obj.get("created"), f"application fee {fee_id} created")
    changes: list[Change] = [
        FeeChange(
            id=fee_id,
            account=account,
            amount=amount,
            amount_refunded=_opt_int(obj, "amount_refunded") or 0,
            currency=currency,
            charge=_ref(obj.get("charge")),
            originating_transaction=_ref(obj.get("originating_transaction")),
            application=_ref(obj.get("application")),
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
    changes.extend(_fee_refund(refund, ev, fee_id) for refund in _list_data(obj, "refunds"))
    return changes


def _fee_refund(obj: Mapping[str, Any], ev: _Event, fee: str | None = None) -> FeeRefundChange:
    refund_id = _str(obj, "id")
    fee_id = _ref(obj.get("fee")) or fee
    if fee_id is None:
        raise PoisonRecord(f"fee refund {refund_id!r} has no fee")
    return FeeRefundChange(
        id=refund_id,
        fee=fee_id,
        amount=_int(obj, "amount"),
        currency=_str(obj, "currency"),
        created=_time(obj.get("created"), f"fee refund {refund_id} created"),
        last_event_id=ev.id,
        last_event_created=ev.created,
    )


def fee_refund(ev: _Event) -> list[Change]:
    """`application_fee.refund.updated`: the refund alone (its fee names the account)."""
    return [_fee_refund(ev.obj, ev)]


def payout(ev: _Event) -> list[Change]:
    """A connected account's payout; the platform's own payouts (no `account`) are skipped."""
    obj = ev.obj
    if ev.account is None:
        return []
    payout_id = _str(obj, "id")
    status = _str(obj, "status")
    return [
        PayoutChange(
            id=payout_id,
            account=ev.account,
            amount=_int(obj, "amount"),
            currency=_str(obj, "currency"),
            status=status,
            status_rank=PAYOUT_STATUS_RANK.get(status, 0),
            arrival_date=_opt_time(obj.get("arrival_date"), f"payout {payout_id} arrival_date"),
            failure_code=_opt_str(obj, "failure_code"),
            failure_message=_opt_str(obj, "failure_message"),
            method=_opt_str(obj, "method"),
            automatic=_opt_bool(obj, "automatic"),
            livemode=ev.livemode,
            created=_time(obj.get("created"), f"payout {payout_id} created"),
            paid_at=ev.created if status == "paid" else None,
            paid_event_id=ev.id if status == "paid" else None,
            failed_at=ev.created if status == "failed" else None,
            failed_event_id=ev.id if status == "failed" else None,
            last_event_id=ev.id,
            last_event_created=ev.created,
        )
    ]


REDUCERS: dict[str, Callable[[_Event], list[Change]]] = {
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


def reduce(record: Record) -> Sequence[Change]:
    """The changes one record makes; [] for events this projection does not read."""
    event_type = record.header("stripe-event-type")
    # The header lets the common case (an event for another projection) skip JSON parsing.
    if event_type is not None and event_type not in EVENT_TYPES:
        return []
    event = record.json()
    event_type = event.get("type") if event_type is None else event_type
    reducer = REDUCERS.get(event_type) if isinstance(event_type, str) else None
    if reducer is None:
        return []
    return reducer(_Event(event, record))
