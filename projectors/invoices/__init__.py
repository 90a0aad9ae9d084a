"""The `invoices` projection: invoices, invoice lines and invoice payments."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import asyncpg

from deploy.settings import Settings
from projectors.base import Record
from projectors.invoices import reducer, store
from projectors.invoices.reducer import Change


class InvoicesProjection:
    """Newest snapshot of every invoice (with its lines) and invoice payment."""

    name = "invoices"
    sql_dir = Path(__file__).resolve().parent / "sql"

    def topics(self, settings: Settings) -> Sequence[str]:
        """The event log."""
        return [settings.topic]

    def reduce(self, record: Record) -> Sequence[Change]:
        """Pure: the snapshot one record carries, if it is about an invoice."""
        return reducer.reduce(record)

    async def apply(self, conn: asyncpg.Connection, changes: Sequence[Change]) -> None:
        """Upsert the batch's newest snapshots (caller's transaction)."""
        await store.apply(conn, changes)


projection = InvoicesProjection()

__all__ = ["InvoicesProjection", "projection"]
