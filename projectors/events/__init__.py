"""`events`: `projections.events`, the index of the log (one row per Stripe event id).

The reference projection: a pure reducer (`reducer.py`), a batched store (`store.py`),
numbered migrations (`sql/`). Copy this folder to start a new projection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from deploy.settings import Settings
from projectors.base import Record
from projectors.events import reducer, store
from projectors.events.reducer import EventRow


@dataclass(frozen=True)
class EventsProjection:
    """The log's index; reads only the event log topic."""

    name: str = "events"
    sql_dir: Path = Path(__file__).resolve().parent / "sql"

    def topics(self, settings: Settings) -> Sequence[str]:
        """Only the event log."""
        return [settings.topic]

    def reduce(self, record: Record) -> Sequence[EventRow]:
        """One row per record (see reducer.reduce)."""
        return reducer.reduce(record)

    async def apply(self, conn: asyncpg.Connection, changes: Sequence[EventRow]) -> None:
        """One multi-row insert (see store.apply)."""
        await store.apply(conn, changes)


projection = EventsProjection()
