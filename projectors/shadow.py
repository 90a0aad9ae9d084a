"""Shadow schemas for replay: build one, seed it from the live tables, swap it in.

The swap is one transaction: lock the positions (the runner's lock order: positions,
then tables), save and drop every view on the live tables (views bind to table OIDs),
drop the live tables, move the shadow tables, types and functions into `projections`,
re-run every views.sql, re-create the other views (`dependents.py`), and replace the
live positions by the rebuilt ones. Readers block for the length of that transaction
and then see the rebuilt tables, never an empty or half-built one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
from aiokafka import TopicPartition

from projectors import dependents, offsets
from projectors.base import LIVE_SCHEMA, Connection
from projectors.migrate import (
    ADVISORY_LOCK_KEY,
    apply_views,
    migrate,
    migrations_in,
    recorded_versions,
)

# How long the swap waits for one lock before it backs off and retries; well below
# PostgreSQL's deadlock_timeout (1 s), so a reader is never the deadlock victim.
LOCK_TIMEOUT_MS = 300


class SwapError(Exception):
    """The shadow schema holds something the swap cannot move; nothing was changed."""


class ShadowBehind(Exception):
    """The live runner applied records the rebuild has not; nothing was changed."""


async def _live_ahead(conn: asyncpg.Connection, name: str) -> dict[TopicPartition, int]:
    """The live next offsets on partitions where the live runner is past the rebuild."""
    live = await offsets.load_all(conn, name)
    rebuilt = await offsets.load_all(conn, replay_key(name))
    return {
        tp: at.next_offset
        for tp, at in live.items()
        if tp in rebuilt and at.next_offset > rebuilt[tp].next_offset
    }


def shadow_schema(name: str) -> str:
    """The schema a replay of `name` builds into."""
    return f"replay_{name}"


def replay_key(name: str) -> str:
    """The `lattice.offsets` projector key of a replay's own positions."""
    return f"{name}.replay"


def ident(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


async def tables_in(conn: Connection, schema: str) -> list[str]:
    """The ordinary and partitioned tables of a schema, by name."""
    return list(await table_oids(conn, schema))


async def table_oids(conn: Connection, schema: str) -> dict[str, int]:
    """The ordinary and partitioned tables of a schema, by name, and their OIDs."""
    rows = await conn.fetch(
        "SELECT c.relname, c.oid FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
        "ORDER BY c.relname",
        schema,
    )
    return {r["relname"]: int(r["oid"]) for r in rows}


async def build(conn: asyncpg.Connection, projection: Any, schema: str) -> list[str]:
    """Drop any earlier shadow, run every migration into a fresh one; its tables."""
    await conn.execute(f"DROP SCHEMA IF EXISTS {ident(schema)} CASCADE")
    await migrate(conn, [projection], schema=schema, record=False)
    return await tables_in(conn, schema)


async def seed(conn: Connection, schema: str, tables: Sequence[str]) -> None:
    """Copy the live rows into the shadow tables (replay from an offset or a time
    re-applies the log on top of them). Run it in the snapshot the positions were read in."""
    for table in tables:
        columns = await conn.fetch(
            "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 "
            "AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped "
            "AND a.attgenerated = '' ORDER BY a.attnum",
            schema,
            table,
        )
        names = ", ".join(ident(r["attname"]) for r in columns)
        await conn.execute(
            f"INSERT INTO {ident(schema)}.{ident(table)} ({names}) OVERRIDING SYSTEM VALUE "
            f"SELECT {names} FROM {ident(LIVE_SCHEMA)}.{ident(table)}"
        )
        # Serial and identity columns: carry the live counters over, or new rows collide.
        for column in columns:
            seq = await conn.fetchval(
                "SELECT pg_get_serial_sequence($1, $2)",
                f"{ident(schema)}.{ident(table)}",
                column["attname"],
            )
            if seq is not None:
                column_sql = ident(column["attname"])
                await conn.execute(
                    f"SELECT setval($1, GREATEST(1, (SELECT COALESCE(max({column_sql}), 0) "
                    f"FROM {ident(schema)}.{ident(table)})))",
                    seq,
                )


async def refuse_newer_migrations(conn: Connection, projection: Any) -> None:
    """The shadow is built from this process's migration files. One recorded for the live
    tables that those lack (a newer version deployed, before or while the replay ran)
    would be undone by the swap while `lattice.migrations` still lists it: refuse. Under
    the migrations' lock, so none is applied meanwhile."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK_KEY)
    built = {m.version for m in migrations_in(projection.sql_dir)}
    newer = sorted(await recorded_versions(conn, projection.name) - built)
    if newer:
        raise SwapError(
            f"the live tables of {projection.name} have migrations this version lacks "
            f"({', '.join(map(str, newer))}: a newer version deployed?), which the rebuilt "
            "tables would undo: run the replay with that version; the live tables are unchanged"
        )


async def _move_types_and_functions(conn: Connection, schema: str) -> None:
    # Enums, domains and composite types the migrations created (not the row types of
    # tables, which move with their table).
    types = await conn.fetch(
        "SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
        "WHERE n.nspname = $1 AND t.typtype IN ('e', 'd', 'c') AND (t.typtype <> 'c' OR "
        "(SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')",
        schema,
    )
    for row in types:
        name = ident(row["typname"])
        await conn.execute(f"DROP TYPE IF EXISTS {ident(LIVE_SCHEMA)}.{name} CASCADE")
        await conn.execute(f"ALTER TYPE {ident(schema)}.{name} SET SCHEMA {ident(LIVE_SCHEMA)}")
    functions = await conn.fetch(
        "SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args FROM pg_proc p "
        "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1",
        schema,
    )
    for row in functions:
        signature = f"{ident(row['proname'])}({row['args']})"
        await conn.execute(f"DROP ROUTINE IF EXISTS {ident(LIVE_SCHEMA)}.{signature} CASCADE")
        await conn.execute(
            f"ALTER ROUTINE {ident(schema)}.{signature} SET SCHEMA {ident(LIVE_SCHEMA)}"
        )


async def swap(
    conn: asyncpg.Connection,
    projection: Any,
    schema: str,
    view_owners: Sequence[Any],
    *,
    behind_ok: bool = False,
) -> list[str]:
    """Swap the shadow tables in and adopt the replay's positions, in the caller's
    transaction; returns the tables swapped. LockNotAvailableError: a reader held on;
    retry. ShadowBehind (unless `behind_ok`): with the live positions locked, the live
    runner is past the rebuild; swapped in now, the tables would lose the rows of those
    records until it applied them again: catch up and retry. `view_owners`: the other
    projections whose views.sql is re-run if installed here (a view may join several
    projections' tables)."""
    name = projection.name
    # Readers lock a view and its tables in whatever order their query names them, so a
    # swap can deadlock with one. Waiting briefly and giving up (the caller retries) makes
    # the swap, never a reader, the one that backs off.
    await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'")
    await offsets.lock(conn, name)  # the runner's order: positions, then tables
    await offsets.lock(conn, replay_key(name))
    ahead = await _live_ahead(conn, name)
    if ahead and not behind_ok:
        raise ShadowBehind(f"the live tables are ahead of the rebuild on {sorted(ahead)}")
    await refuse_newer_migrations(conn, projection)
    tables = await tables_in(conn, schema)
    live = set(await tables_in(conn, LIVE_SCHEMA))
    doomed = [f"{ident(LIVE_SCHEMA)}.{ident(t)}" for t in tables if t in live]
    if doomed:
        await conn.execute(f"LOCK TABLE {', '.join(doomed)} IN ACCESS EXCLUSIVE MODE")
    # The shadow's own views (from views.sql) are bound to the shadow tables; the live
    # ones are re-created from views.sql below.
    shadow_views = await conn.fetch(
        "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind IN ('v', 'm')",
        schema,
    )
    for row in shadow_views:
        kind = "MATERIALIZED VIEW" if row["relkind"] == "m" else "VIEW"
        await conn.execute(f"DROP {kind} IF EXISTS {ident(schema)}.{ident(row['relname'])} CASCADE")
    # Every view on the live tables, ours and other people's: saved, dropped, re-created.
    dependent = await dependents.save(conn, LIVE_SCHEMA, tables)
    granted = await dependents.table_grants(conn, LIVE_SCHEMA, [t for t in tables if t in live])
    await dependents.drop(conn, dependent)
    for table in tables:
        if table in live:
            await conn.execute(f"DROP TABLE {ident(LIVE_SCHEMA)}.{ident(table)} CASCADE")
        await conn.execute(
            f"ALTER TABLE {ident(schema)}.{ident(table)} SET SCHEMA {ident(LIVE_SCHEMA)}"
        )
    await _move_types_and_functions(conn, schema)
    try:
        # RESTRICT: anything the swap did not move fails the transaction, not silently lost.
        await conn.execute(f"DROP SCHEMA {ident(schema)} RESTRICT")
    except Exception as exc:
        raise SwapError(
            f"shadow schema {schema} holds objects a swap cannot move ({exc}); "
            "the live tables are unchanged"
        ) from exc
    await conn.execute(f"SET LOCAL search_path TO {ident(LIVE_SCHEMA)}, public")
    installed = {
        r["projector"]
        for r in await conn.fetch("SELECT DISTINCT projector FROM lattice.migrations")
    }
    for owner in [projection, *view_owners]:
        # Only projections installed in this database; a failing views.sql fails the swap.
        if owner is projection or owner.name in installed:
            await _views(conn, owner)
    for grant in granted:
        await conn.execute(grant)
    await dependents.restore(conn, dependent)
    await offsets.adopt(conn, name, replay_key(name))
    return tables


# What makes a statement of the swap give up waiting for readers (see `swap`).
READERS_HOLD = (
    asyncpg.LockNotAvailableError,
    asyncpg.DeadlockDetectedError,
    # A statement_timeout shorter than the lock_timeout ends the wait for readers this way
    # (or a pg_cancel_backend): the session and its lock stay.
    asyncpg.QueryCanceledError,
)


async def _views(conn: asyncpg.Connection, owner: Any) -> None:
    """`owner`'s views.sql; a reader holding one of its views (CREATE OR REPLACE VIEW
    waits for it, even on a view of other tables) raises as a reader holding a table
    does, so the swap backs off and tries again instead of failing."""
    try:
        await apply_views(conn, owner)
    except Exception as exc:
        if isinstance(exc.__cause__, READERS_HOLD):
            raise exc.__cause__ from None
        raise
