"""The `connect` projection: connected accounts, transfers and their reversals, charges and
application fees, payouts, and a per-account ledger with balances (see README, `connect`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import asyncpg

from deploy.settings import Settings
from projectors.base import Record
from projectors.connect import reducer, store
from projectors.connect.changes import Change


class ConnectProjection:
    """Reads the event log; writes `connect_*`, `transfers`, `application_fee*` tables."""

    name = "connect"
    sql_dir = Path(__file__).resolve().parent / "sql"

    def __init__(self, platform_account: str | None = None) -> None:
        self.platform_account = platform_account

    def configured(self, settings: Settings) -> ConnectProjection:
        """This projection knowing the platform's own account (`LATTICE_PLATFORM_ACCOUNT`)."""
        return ConnectProjection(settings.platform_account)

    def topics(self, settings: Settings) -> Sequence[str]:
        """The event log."""
        return [settings.topic]

    def reduce(self, record: Record) -> Sequence[Change]:
        """Pure: the changes one record makes."""
        return reducer.reduce(record, self.platform_account)

    async def apply(self, conn: asyncpg.Connection, changes: Sequence[Change]) -> None:
        """Batched upserts in the caller's transaction."""
        await store.apply(conn, changes)


projection = ConnectProjection()
