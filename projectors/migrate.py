"""Numbered SQL migrations, applied once each, in order, under an advisory lock.

A projection's migrations are the `NNNN_name.sql` files in its `sql_dir`; each is recorded
in `lattice.migrations`. `views.sql`, when present, is re-applied after the migrations
(views are replaced, not migrated, so a replay swap can recreate them).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import asyncpg

from projectors.base import LIVE_SCHEMA, Connection

RUNTIME_SQL = Path(__file__).resolve().parent / "sql"
RUNTIME = "lattice"
# Any constant works; it only has to be the same in every process that migrates.
ADVISORY_LOCK_KEY = 0x1A771CE
# Explicit, whatever the database's or role's default: each statement must see what was
# committed before it, above all what another process committed while we waited for a
# lock (under REPEATABLE READ the snapshot predates the lock: migrations would run twice).
READ_COMMITTED: Final = "read_committed"
MIGRATION_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class MigrationError(Exception):
    """A migration file is misnamed or failed; the message names it."""


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    path: Path


def migrations_in(folder: Path) -> list[Migration]:
    """The numbered migrations of a folder, in order; views.sql is not one."""
    found = []
    for path in sorted(folder.glob("*.sql")):
        if path.name == "views.sql":
            continue
        match = MIGRATION_FILE.match(path.name)
        if match is None:
            raise MigrationError(f"{path}: migration files are named NNNN_name.sql")
        found.append(Migration(int(match.group(1)), path.stem, path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"{folder}: two migrations share a number")
    return found


async def _set_search_path(conn: asyncpg.Connection, schema: str) -> None:
    await conn.execute(f"SET LOCAL search_path TO {_ident(schema)}, public")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def ensure_runtime(conn: asyncpg.Connection) -> None:
    """Create the `lattice` bookkeeping schema and tables (idempotent)."""
    async with conn.transaction(isolation=READ_COMMITTED):
        await conn.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK_KEY)
        for migration in migrations_in(RUNTIME_SQL):
            await conn.execute(migration.path.read_text())


async def migrate(
    conn: asyncpg.Connection,
    projections: Sequence[Any],
    *,
    schema: str = LIVE_SCHEMA,
    record: bool = True,
) -> list[str]:
    """Apply each projection's pending migrations into `schema`; return what was applied.

    `record=False` builds a fresh shadow schema (replay): every migration runs, none is
    recorded, since the shadow tables replace the live ones whole.
    """
    await ensure_runtime(conn)
    applied: list[str] = []
    async with conn.transaction(isolation=READ_COMMITTED):
        # Two processes starting together: the second waits, then finds nothing to do.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK_KEY)
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_ident(schema)}")
        await _set_search_path(conn, schema)
        for projection in projections:
            done = await recorded_versions(conn, projection.name) if record else set()
            for migration in migrations_in(projection.sql_dir):
                if migration.version in done:
                    continue
                try:
                    await conn.execute(migration.path.read_text())
                except asyncpg.PostgresError as exc:
                    raise MigrationError(f"{migration.path}: {exc}") from exc
                if record:
                    await conn.execute(
                        "INSERT INTO lattice.migrations (projector, version, name) "
                        "VALUES ($1, $2, $3)",
                        projection.name,
                        migration.version,
                        migration.name,
                    )
                applied.append(f"{projection.name}/{migration.name}")
            await apply_views(conn, projection)
    return applied


async def recorded_versions(conn: Connection, projector: str) -> set[int]:
    """The migration versions `lattice.migrations` lists as applied for `projector`."""
    rows = await conn.fetch(
        "SELECT version FROM lattice.migrations WHERE projector = $1", projector
    )
    return {row["version"] for row in rows}


async def apply_views(conn: asyncpg.Connection, projection: Any) -> None:
    """Run the projection's views.sql (CREATE OR REPLACE VIEW ...) if it has one."""
    views = Path(projection.sql_dir) / "views.sql"
    if views.exists():
        try:
            await conn.execute(views.read_text())
        except asyncpg.PostgresError as exc:
            raise MigrationError(f"{views}: {exc}") from exc
