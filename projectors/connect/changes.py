"""The changes one event makes to the connect tables: plain frozen rows, one type a table.

Field names are column names. Every change carries the event that produced it
(`last_event_id`, `last_event_created`); how two changes to one row combine is in
`fold.py`, and the SQL in `store.py` keeps the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class AccountChange:
    """An `account.updated` snapshot of a connected account."""

    id: str
    charges_enabled: bool | None
    payouts_enabled: bool | None
    details_submitted: bool | None
    requirements_currently_due: tuple[str, ...]
    requirements_past_due: tuple[str, ...]
    disabled_reason: str | None
    type: str | None
    country: str | None
    default_currency: str | None
    created: datetime | None
    livemode: bool
    last_event_id: str
    last_event_created: datetime


@dataclass(frozen=True, slots=True)
class AuthorizationChange:
    """The platform's application was (de)authorized on an account."""

    id: str
    deauthorized: bool
    application: str | None
    last_event_id: str
    last_event_created: datetime


@dataclass(frozen=True, slots=True)
class TransferChange:
    """A transfer snapshot."""

    id: str
    destination: str
    amount: int
    amount_reversed: int
    currency: str
    source_transaction: str | None
    source_type: str | None
    transfer_group: str | None
    reversed: bool
    destination_payment: str | None
    description: str | None
    account: str | None
    livemode: bool
    created: datetime
    last_event_id: str
    last_event_created: datetime


@dataclass(frozen=True, slots=True)
class ReversalChange:
    """A transfer reversal (`trr_`), as listed in its transfer's `reversals.data`."""

    id: str
    transfer: str
    amount: int
    currency: str
    source_refund: str | None
    created: datetime
    last_event_id: str
    last_event_created: datetime


@dataclass(frozen=True, slots=True)
class ChargeChange:
    """A charge snapshot that involves a connected account."""

    id: str
    account: str | None
    amount: int
    amount_captured: int
    amount_refunded: int
    currency: str
    status: str
    refunded: bool
    destination: str | None
    transfer_amount: int | None
    on_behalf_of: str | None
    transfer: str | None
    transfer_group: str | None
    application_fee: str | None
    application_fee_amount: int | None
    livemode: bool
    created: datetime
    last_event_id: str
    last_event_created: datetime


@dataclass(frozen=True, slots=True)
class FeeChange:
    """An application fee snapshot (collected from `account`)."""

    id: str
    account: str
    amount: int
    amount_refunded: int
    currency: str
    charge: str | None
    originating_transaction: str | None
    application: str | None
    refunded: bool
    livemode: bool
    created: datetime
    last_event_id: str
    last_event_created: datetime


@dataclass(frozen=True, slots=True)
class FeeRefundChange:
    """An application fee refund (`fr_`)."""

    id: str
    fee: str
    amount: int
    currency: str
    created: datetime
    last_event_id: str
    last_event_created: datetime


@dataclass(frozen=True, slots=True)
class PayoutChange:
    """A payout snapshot of a connected account."""

    id: str
    account: str
    amount: int
    currency: str
    status: str
    status_rank: int
    arrival_date: datetime | None
    failure_code: str | None
    failure_message: str | None
    method: str | None
    automatic: bool | None
    livemode: bool
    created: datetime
    paid_at: datetime | None
    paid_event_id: str | None
    failed_at: datetime | None
    failed_event_id: str | None
    last_event_id: str
    last_event_created: datetime


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One money movement, signed from the connected account's side."""

    kind: str
    source_id: str
    account: str
    currency: str
    amount: int
    created: datetime
    last_event_id: str
    last_event_created: datetime


Change = (
    AccountChange
    | AuthorizationChange
    | TransferChange
    | ReversalChange
    | ChargeChange
    | FeeChange
    | FeeRefundChange
    | PayoutChange
    | LedgerEntry
)
