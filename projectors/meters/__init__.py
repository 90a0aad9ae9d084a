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

    async def warnings(self, conn: asyncpg.Connection, schema: str) -> list[str]:
        """What `lattice status` says about these tables in `schema`: meters that prices
        name but no event described (their `billing.meter.created` is older than the
        log), whose usage is therefore never reconciled."""
        unknown = await conn.fetch(
            f"SELECT DISTINCT mp.meter FROM {schema}.meter_prices mp "
            f"WHERE NOT EXISTS (SELECT 1 FROM {schema}.meters m WHERE m.id = mp.meter) "
            "ORDER BY mp.meter"
        )
        if not unknown:
            return []
        named = ", ".join(r["meter"] for r in unknown[:MAX_NAMED])
        more = f" and {len(unknown) - MAX_NAMED} more" if len(unknown) > MAX_NAMED else ""
        return [
            f"{len(unknown)} meter(s) named by prices but described by no event on the log "
            f"({named}{more}): their usage is not reconciled. Their billing.meter.created is "
            "older than the log; an update of each meter (its display name) sends "
            "billing.meter.updated, which describes it (README: Meters older than the log)"
        ]


MAX_NAMED = 5  # meter ids a warning names; the rest are counted


projection = MetersProjection()
