"""The `subscriptions` projection: subscriptions, subscription items and customers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import asyncpg

from deploy.settings import Settings
from projectors.base import Record
from projectors.subscriptions import reducer, store
from projectors.subscriptions.reducer import Change


class SubscriptionsProjection:
    """Newest snapshot of every subscription (with its items) and customer."""

    name = "subscriptions"
    sql_dir = Path(__file__).resolve().parent / "sql"

    def topics(self, settings: Settings) -> Sequence[str]:
        """The event log."""
        return [settings.topic]

    def reduce(self, record: Record) -> Sequence[Change]:
        """Pure: the snapshot one record carries, if it is about a subscription or customer."""
        return reducer.reduce(record)

    async def apply(self, conn: asyncpg.Connection, changes: Sequence[Change]) -> None:
        """Upsert the batch's newest snapshots (caller's transaction)."""
        await store.apply(conn, changes)


projection = SubscriptionsProjection()

__all__ = ["SubscriptionsProjection", "projection"]
