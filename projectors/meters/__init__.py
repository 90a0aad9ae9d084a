"""The `meters` projection: usage the app reported vs what Stripe rejected vs what it billed.

Consumes the event log (meters, subscriptions, invoices, hydrated meter error reports) and
the app's `usage.reported` topic, and keeps `meter_reconciliation` per customer, meter and
billing period, plus the view `usage_discrepancies`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import asyncpg

from deploy.settings import Settings
from projectors.base import Record
from projectors.meters import reducer, store
from projectors.meters.changes import Change

SQL_DIR = Path(__file__).resolve().parent / "sql"


class MetersProjection:
    """Usage-meter reconciliation (see the README section `meters`)."""

    name = "meters"
    sql_dir = SQL_DIR
    # Meter error reports arrive as thin events; the runner fetches their `data` first
    # (only theirs: the reducer ignores every other thin event).
    hydrate_thin_events = True
    thin_event_types = reducer.ERROR_REPORTS
    # A finalized invoice's or issued credit note's lines past the webhook's first page are
    # fetched too (with an API key), so their metered lines and credits are judged.
    complete_lines = True

    def topics(self, settings: Settings) -> Sequence[str]:
        """The event log and the app's usage facts."""
        return [settings.topic, settings.usage_topic]

    def reduce(self, record: Record) -> Sequence[Change]:
        """Pure: the changes one record makes (PoisonRecord for an invalid usage fact)."""
        return reducer.reduce(record)

    async def apply(self, conn: asyncpg.Connection, changes: Sequence[Change]) -> None:
        """Batched SQL in the runner's transaction, then the affected rows are recomputed."""
        await store.apply(conn, changes)


projection = MetersProjection()
