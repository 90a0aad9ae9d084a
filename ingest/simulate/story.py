"""The simulated month as it happens: every event Stripe sends, every usage fact, in time."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ingest.simulate.billing_shapes import Invoice, Subscription
from ingest.simulate.shapes import Ids, Json, event

DAY = 86_400
HOUR = 3_600
PERIOD = 30 * DAY  # a fixed 30-day month keeps the arithmetic readable
YEAR = 365 * DAY
MONTH_START = int(datetime(2026, 10, 1, tzinfo=UTC).timestamp())
# `--api-version mixed`: the endpoint's version is upgraded from the old era to the new
# at this moment, as an operator upgrades an endpoint; objects made before it get
# new-shape events after it. Customers sign up on days 0-8 and renew 30 days later: on
# day 34 about half the renewals (their metered lines, failed payments, credit notes)
# came in the old shape, and dunning retries cross the upgrade.
UPGRADED_AT = MONTH_START + 34 * DAY

PLATFORM = "platform"
CONNECT = "connect"


@dataclass(frozen=True, slots=True)
class Emitted:
    """One event Stripe sends: when it happened, to which endpoint, and its body."""

    created: int
    seq: int
    endpoint: str
    body: Json


@dataclass(frozen=True, slots=True)
class Fact:
    """One usage fact the app reports on `usage.reported`, and when it reports it."""

    reported_at: int
    seq: int
    customer: str
    value: Json


@dataclass(frozen=True, slots=True)
class UsageTruth:
    """What happened to a billed period's usage, as only the simulation knows it: units
    reported after the invoice was finalized (never billed), units billed the app never
    logged, units Stripe rejected that no error report's samples name, and units a
    credit note gave back."""

    late: int
    lost: int
    unsampled: int
    credited: int = 0


@dataclass(slots=True)
class Transfer:
    """A transfer to a connected account and what came back of it."""

    id: str
    destination: str
    amount: int
    currency: str
    created: int
    source_transaction: str | None
    transfer_group: str | None
    reversals: list[tuple[str, int, int]] = field(default_factory=list)  # (id, amount, created)


@dataclass(slots=True)
class Story:
    """Everything the month produced, plus the final state of every object."""

    rng: random.Random
    ids: Ids
    events: list[Emitted] = field(default_factory=list)
    facts: list[Fact] = field(default_factory=list)
    hydrated: dict[str, Json] = field(default_factory=dict)
    subscriptions: list[Subscription] = field(default_factory=list)
    invoices: list[Invoice] = field(default_factory=list)
    # (customer, meter, period_start) -> [period_end, reported, rejected, billed, closed,
    #                                     credited]
    usage: dict[tuple[str, str, int], list[Any]] = field(default_factory=dict)
    truth: dict[tuple[str, str, int], UsageTruth] = field(default_factory=dict)
    transfers: list[Transfer] = field(default_factory=list)
    fees: list[tuple[str, str, int, int]] = field(default_factory=list)  # acct, cur, fee, refunded
    payouts: list[tuple[str, str, int, str]] = field(default_factory=list)  # acct, cur, amt, status
    meter_id: str = ""

    def emit(
        self,
        created: int,
        kind: str,
        obj: Json,
        api_version: str,
        *,
        account: str | None = None,
        previous: Json | None = None,
        event_id: str | None = None,
    ) -> None:
        """Record a snapshot event of `obj` at `created` (with a fresh id unless given)."""
        body = event(
            event_id or self.ids.new("evt"),
            kind,
            created,
            obj,
            api_version,
            account=account,
            previous=previous,
        )
        endpoint = CONNECT if account is not None else PLATFORM
        self.events.append(Emitted(created, len(self.events), endpoint, body))

    def emit_thin(self, created: int, body: Json, hydrated: Json) -> None:
        """Record a thin event and the full body Stripe's API returns for it."""
        self.events.append(Emitted(created, len(self.events), PLATFORM, body))
        self.hydrated[str(body["id"])] = hydrated

    def report(self, reported_at: int, customer: str, value: Json) -> None:
        """Record a usage fact the app publishes at `reported_at`."""
        self.facts.append(Fact(reported_at, len(self.facts), customer, value))
