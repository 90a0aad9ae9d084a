"""Pure: how changes to one row combine, and what ledger and balances a set of changes gives.

This is the projection's semantics in memory. The store uses it to merge a batch before
writing (one row per key per statement) and its SQL keeps the same rules across batches;
the tests use it as the reference any order of delivery must reach:

- snapshots: the newest event wins (by `last_event_created`, then `last_event_id`, so ties
  resolve the same way in every order); amounts that only grow and flags that only turn on
  are merged with max / or;
- payouts: the furthest lifecycle status wins (a late `paid` never undoes `failed`);
- immutable objects and ledger entries: the earliest event that reported them is kept.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, TypeVar

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

T = TypeVar("T", bound=Any)


def _stamp(row: Any) -> tuple[datetime, str]:
    return (row.last_event_created, row.last_event_id)


def newest(old: T | None, new: T) -> T:
    """The later snapshot of the two."""
    return new if old is None or _stamp(new) > _stamp(old) else old


def earliest(old: T | None, new: T) -> T:
    """The earlier report of the two (for objects that never change)."""
    return new if old is None or _stamp(new) < _stamp(old) else old


def merge_transfer(old: TransferChange | None, new: TransferChange) -> TransferChange:
    """Newest snapshot, with amount_reversed and reversed never going back."""
    if old is None:
        return new
    return replace(
        newest(old, new),
        amount_reversed=max(old.amount_reversed, new.amount_reversed),
        reversed=old.reversed or new.reversed,
    )


def merge_charge(old: ChargeChange | None, new: ChargeChange) -> ChargeChange:
    """Newest snapshot, with captured and refunded amounts never going back."""
    if old is None:
        return new
    return replace(
        newest(old, new),
        amount_captured=max(old.amount_captured, new.amount_captured),
        amount_refunded=max(old.amount_refunded, new.amount_refunded),
        refunded=old.refunded or new.refunded,
    )


def merge_fee(old: FeeChange | None, new: FeeChange) -> FeeChange:
    """Newest snapshot, with amount_refunded and refunded never going back."""
    if old is None:
        return new
    return replace(
        newest(old, new),
        amount_refunded=max(old.amount_refunded, new.amount_refunded),
        refunded=old.refunded or new.refunded,
    )


def _first(
    a: tuple[datetime | None, str | None], b: tuple[datetime | None, str | None]
) -> tuple[datetime | None, str | None]:
    if a[0] is None or a[1] is None:
        return b
    if b[0] is None or b[1] is None:
        return a
    return min((a[0], a[1]), (b[0], b[1]))


def merge_payout(old: PayoutChange | None, new: PayoutChange) -> PayoutChange:
    """Furthest status (then newest snapshot); the first `paid` and `failed` reports kept."""
    if old is None:
        return new
    rank = (new.status_rank, new.last_event_created, new.last_event_id)
    won = new if rank > (old.status_rank, old.last_event_created, old.last_event_id) else old
    paid_at, paid_event_id = _first(
        (old.paid_at, old.paid_event_id), (new.paid_at, new.paid_event_id)
    )
    failed_at, failed_event_id = _first(
        (old.failed_at, old.failed_event_id), (new.failed_at, new.failed_event_id)
    )
    return replace(
        won,
        paid_at=paid_at,
        paid_event_id=paid_event_id,
        failed_at=failed_at,
        failed_event_id=failed_event_id,
    )


@dataclass
class State:
    """Every row the changes so far imply, by key."""

    accounts: dict[str, AccountChange] = field(default_factory=dict)
    authorizations: dict[str, AuthorizationChange] = field(default_factory=dict)
    transfers: dict[str, TransferChange] = field(default_factory=dict)
    reversals: dict[str, ReversalChange] = field(default_factory=dict)
    charges: dict[str, ChargeChange] = field(default_factory=dict)
    fees: dict[str, FeeChange] = field(default_factory=dict)
    fee_refunds: dict[str, FeeRefundChange] = field(default_factory=dict)
    payouts: dict[str, PayoutChange] = field(default_factory=dict)
    entries: dict[tuple[str, str], LedgerEntry] = field(default_factory=dict)

    def add(self, change: Change) -> None:
        """Merge one change into its row."""
        match change:
            case AccountChange():
                self.accounts[change.id] = newest(self.accounts.get(change.id), change)
            case AuthorizationChange():
                self.authorizations[change.id] = newest(self.authorizations.get(change.id), change)
            case TransferChange():
                self.transfers[change.id] = merge_transfer(self.transfers.get(change.id), change)
            case ReversalChange():
                self.reversals[change.id] = earliest(self.reversals.get(change.id), change)
            case ChargeChange():
                self.charges[change.id] = merge_charge(self.charges.get(change.id), change)
            case FeeChange():
                self.fees[change.id] = merge_fee(self.fees.get(change.id), change)
            case FeeRefundChange():
                self.fee_refunds[change.id] = earliest(self.fee_refunds.get(change.id), change)
            case PayoutChange():
                self.payouts[change.id] = merge_payout(self.payouts.get(change.id), change)
            case LedgerEntry():
                key = (change.kind, change.source_id)
                self.entries[key] = earliest(self.entries.get(key), change)


def fold(changes: Iterable[Change], state: State | None = None) -> State:
    """Merge `changes` into `state` (a new one by default) and return it."""
    state = State() if state is None else state
    for change in changes:
        state.add(change)
    return state


def payout_entries(payout: PayoutChange) -> list[LedgerEntry]:
    """A payout is booked when reported paid, and booked back if it then failed."""
    if payout.paid_at is None or payout.paid_event_id is None:
        return []
    entries = [
        LedgerEntry(
            "payout",
            payout.id,
            payout.account,
            payout.currency,
            -payout.amount,
            payout.paid_at,
            payout.paid_event_id,
            payout.paid_at,
        )
    ]
    if payout.failed_at is not None and payout.failed_event_id is not None:
        entries.append(
            LedgerEntry(
                "payout_failed",
                payout.id,
                payout.account,
                payout.currency,
                payout.amount,
                payout.failed_at,
                payout.failed_event_id,
                payout.failed_at,
            )
        )
    return entries


def fee_refund_entry(refund: FeeRefundChange, fee: FeeChange) -> LedgerEntry:
    """A fee refund returns money to the account the fee was collected from."""
    return LedgerEntry(
        "fee_refund",
        refund.id,
        fee.account,
        refund.currency,
        refund.amount,
        refund.created,
        refund.last_event_id,
        refund.last_event_created,
    )


def ledger(state: State) -> dict[tuple[str, str], LedgerEntry]:
    """Every ledger entry the state implies, by (kind, source_id)."""
    entries = dict(state.entries)
    for refund in state.fee_refunds.values():
        fee = state.fees.get(refund.fee)
        if fee is not None:
            entries[("fee_refund", refund.id)] = fee_refund_entry(refund, fee)
    for payout in state.payouts.values():
        for entry in payout_entries(payout):
            entries[(entry.kind, entry.source_id)] = entry
    return entries


@dataclass(frozen=True)
class Balance:
    """One row of `connect_balances` (all positive but `net`)."""

    transferred: int = 0
    reversed: int = 0
    application_fees: int = 0
    refunded_fees: int = 0
    paid_out: int = 0
    net: int = 0
    debited: int = 0


_BALANCE_FIELD = {
    "transfer": "transferred",
    "reversal": "reversed",
    "application_fee": "application_fees",
    "fee_refund": "refunded_fees",
    "payout": "paid_out",
    "payout_failed": "paid_out",
    "debit": "debited",
    "debit_reversal": "debited",
}
_POSITIVE_WHEN_IN = {"transfer", "fee_refund"}


def balances(entries: Iterable[LedgerEntry]) -> dict[tuple[str, str], Balance]:
    """`connect_balances` computed from ledger entries, per (account, currency)."""
    sums: dict[tuple[str, str], dict[str, int]] = {}
    for entry in entries:
        row = sums.setdefault(
            (entry.account, entry.currency),
            dict.fromkeys(
                (*_BALANCE_FIELD.values(), "net"),
                0,
            ),
        )
        column = _BALANCE_FIELD[entry.kind]
        row[column] += entry.amount if entry.kind in _POSITIVE_WHEN_IN else -entry.amount
        row["net"] += entry.amount
    return {key: Balance(**row) for key, row in sums.items()}
