"""What `lattice backfill` knows from PostgreSQL: which events the log already has
(`projections.events`), which it appended itself (`lattice.backfilled_events`), and how
far the events projector is behind the log."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from projectors.base import Connection

# Any constant: two backfills of one database at once would race on the ledger.
BACKFILL_LOCK_KEY = 0x1A77BF11
EVENTS_PROJECTOR = "events"


class BackfillError(Exception):
    """Backfill cannot run safely now; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Pending:
    """An event a killed run asked the producer to append, unsure whether it landed."""

    id: str
    since: datetime


async def require_index(conn: Connection) -> None:
    """Fail clearly when the events projection (the log's index) was never migrated."""
    exists = await conn.fetchval("SELECT to_regclass('projections.events') IS NOT NULL")
    if not exists:
        raise BackfillError(
            "projections.events does not exist: run `lattice migrate` and "
            "`lattice project events` first, so backfill knows which events the log has"
        )


async def accounts_in_log(conn: Connection, since: datetime) -> list[str]:
    """Connected accounts with events in the log's index from 30 days before `since` on:
    those a backfill would miss unless they are listed by name."""
    rows = await conn.fetch(
        "SELECT DISTINCT account FROM projections.events "
        "WHERE account IS NOT NULL AND created >= $1::timestamptz - interval '30 days' "
        "ORDER BY account",
        since,
    )
    return [str(r["account"]) for r in rows]


async def try_lock(conn: asyncpg.Connection) -> bool:
    """Take the session-wide backfill lock; False when another backfill holds it."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", BACKFILL_LOCK_KEY))


async def unlock(conn: asyncpg.Connection) -> None:
    """Release the backfill lock."""
    await conn.execute("SELECT pg_advisory_unlock($1)", BACKFILL_LOCK_KEY)


async def known(conn: Connection, topic: str, ids: Sequence[str]) -> tuple[set[str], set[str]]:
    """Of `ids`: those in the log's index, and those an earlier backfill appended."""
    indexed = await conn.fetch("SELECT id FROM projections.events WHERE id = ANY($1::text[])", ids)
    appended = await conn.fetch(
        "SELECT id FROM lattice.backfilled_events WHERE topic = $1 AND id = ANY($2::text[])",
        topic,
        ids,
    )
    return {r["id"] for r in indexed}, {r["id"] for r in appended}


async def mark_sending(
    conn: Connection, topic: str, ids: Sequence[str], created: Sequence[int]
) -> None:
    """Record that these events (ids, Unix `created`) are about to be appended."""
    await conn.execute(
        """
        INSERT INTO lattice.backfilled_events (topic, id, state, created)
        SELECT $1, id, 'sending', to_timestamp(c)
          FROM unnest($2::text[], $3::bigint[]) AS e(id, c)
        ON CONFLICT (topic, id) DO UPDATE SET state = 'sending', updated_at = now()
        """,
        topic,
        list(ids),
        list(created),
    )


async def mark_appended(conn: Connection, topic: str, ids: Sequence[str]) -> None:
    """The broker acknowledged these: never append them again."""
    await conn.execute(
        "UPDATE lattice.backfilled_events SET state = 'appended', updated_at = now() "
        "WHERE topic = $1 AND id = ANY($2::text[])",
        topic,
        ids,
    )


async def forget(conn: Connection, topic: str, ids: Sequence[str]) -> None:
    """These never reached the log: drop them so this run appends them."""
    await conn.execute(
        "DELETE FROM lattice.backfilled_events WHERE topic = $1 AND id = ANY($2::text[]) "
        "AND state = 'sending'",
        topic,
        ids,
    )


async def pending(conn: Connection, topic: str) -> list[Pending]:
    """Events a killed run left between `sending` and `appended`."""
    rows = await conn.fetch(
        "SELECT id, updated_at FROM lattice.backfilled_events "
        "WHERE topic = $1 AND state = 'sending'",
        topic,
    )
    return [Pending(r["id"], r["updated_at"]) for r in rows]


async def events_lag(conn: Connection, topic: str, ends: Mapping[int, int]) -> int:
    """Records of `topic` the events projector has not indexed yet."""
    rows = await conn.fetch(
        "SELECT partition, next_offset FROM lattice.offsets WHERE projector = $1 AND topic = $2",
        EVENTS_PROJECTOR,
        topic,
    )
    stored = {int(r["partition"]): int(r["next_offset"]) for r in rows}
    return sum(max(0, end - stored.get(partition, 0)) for partition, end in ends.items())
