"""Numbered SQL migrations, applied once each, in order, under an advisory lock.

A projection's migrations are the `NNNN_name.sql` files in its `sql_dir`; each is recorded
in `lattice.migrations`. `views.sql`, when present, is re-applied after the migrations
(views are replaced, not migrated, so a replay swap can recreate them).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import asyncpg
import structlog

from projectors.base import LIVE_SCHEMA, Connection

log = structlog.get_logger("lattice.migrate")
RUNTIME_SQL = Path(__file__).resolve().parent / "sql"
RUNTIME = "lattice"
# Any constant works; it only has to be the same in every process that migrates.
ADVISORY_LOCK_KEY = 0x1A771CE
# Explicit, whatever the database's or role's default: each statement must see what was
# committed before it, above all what another process committed while we waited for a
# lock (under REPEATABLE READ the snapshot predates the lock: migrations would run twice).
READ_COMMITTED: Final = "read_committed"
# How long a migration or view statement waits for another session's lock before its try
# is rolled back (so the live projectors' writes do not queue behind it) and made again.
LOCK_WAIT_SECONDS = 5.0
LOCK_RETRY_SECONDS = 2.0
LOCK_TRIES = 3  # the last waits without a bound
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
        await _take_migration_lock(conn)
        for migration in migrations_in(RUNTIME_SQL):
            await conn.execute(migration.path.read_text(encoding="utf-8"))


async def migrate(
    conn: asyncpg.Connection,
    projections: Sequence[Any],
    *,
    schema: str = LIVE_SCHEMA,
    record: bool = True,
    lock_wait: float = LOCK_WAIT_SECONDS,
) -> list[str]:
    """Apply each projection's pending migrations into `schema`; return what was applied.
    A statement that waits `lock_wait` for another session's lock rolls the try back,
    says who holds locks there, and the migrations are tried again (the last try waits
    as long as it takes).

    `record=False` builds a fresh shadow schema (replay): every migration runs, none is
    recorded, since the shadow tables replace the live ones whole.
    """
    await ensure_runtime(conn)
    for attempt in range(1, LOCK_TRIES + 1):
        # The last try waits as long as it takes (as PostgreSQL's lock queue would): the
        # lock is then its own once the readers before it finish, however busy the view.
        last = attempt == LOCK_TRIES
        try:
            return await _migrate_once(
                conn, projections, schema, record, None if last else lock_wait
            )
        except _LockTimeout:
            # A session holds a lock on a table or view that a migration or a view's
            # CREATE OR REPLACE needs (a BI tool idle in a transaction that read it). The
            # try is rolled back, so nothing queued behind us meanwhile (the live
            # projectors' writes, the other processes' starts); say who, and try again.
            log.warning(
                "migration waits for a lock another session holds",
                tries=attempt,
                sessions=await _lock_holders(conn, schema),
            )
            await asyncio.sleep(LOCK_RETRY_SECONDS)
    raise AssertionError("the last try has no lock timeout")


async def _take_migration_lock(conn: asyncpg.Connection) -> None:
    """The advisory lock that has one process at a time migrate, held to the end of the
    transaction. Another process holding it can wait long itself (for a reader's lock, the
    last try without a bound): this one says so rather than look hung, and waits for it
    as long as it takes, also where the role or the database sets a lock_timeout."""
    if await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", ADVISORY_LOCK_KEY):
        return
    rows = await conn.fetch(
        "SELECT a.pid, a.usename, a.application_name "
        "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1 AND l.objid = $2 "
        "AND l.objsubid = 1 "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        ADVISORY_LOCK_KEY >> 32,
        ADVISORY_LOCK_KEY & 0xFFFFFFFF,
    )
    log.info("migrations wait for another process's", sessions=_sessions(rows))
    # Only this wait goes unbounded: the statements after keep the session's lock_timeout.
    kept = await conn.fetchval("SELECT current_setting('lock_timeout')")
    await conn.execute("SET LOCAL lock_timeout = 0")
    await conn.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK_KEY)
    await conn.execute("SELECT set_config('lock_timeout', $1, true)", kept)


class _LockTimeout(Exception):
    """Our own `lock_timeout` expired (not a NOWAIT of a migration file's)."""


async def _migrate_once(
    conn: asyncpg.Connection,
    projections: Sequence[Any],
    schema: str,
    record: bool,
    lock_wait: float | None,
) -> list[str]:
    applied: list[str] = []
    async with conn.transaction(isolation=READ_COMMITTED):
        # Two processes starting together: the second waits, then finds nothing to do.
        await _take_migration_lock(conn)
        # The last try (None) waits without a bound, also where the role or the database
        # sets a lock_timeout of its own.
        wait_ms = 0 if lock_wait is None else max(1, round(lock_wait * 1000))
        await conn.execute(f"SET LOCAL lock_timeout = '{wait_ms}ms'")
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_ident(schema)}")
        await _set_search_path(conn, schema)
        for projection in projections:
            done = await recorded_checksums(conn, projection.name) if record else {}
            for migration in migrations_in(projection.sql_dir):
                text = migration.path.read_text(encoding="utf-8")
                if migration.version in done:
                    await _same_as_applied(conn, projection.name, migration, text, done)
                    continue
                try:
                    await conn.execute(text)
                except asyncpg.PostgresError as exc:
                    _raise_lock_timeout(exc)
                    raise MigrationError(f"{migration.path}: {exc}") from exc
                if record:
                    await conn.execute(
                        "INSERT INTO lattice.migrations (projector, version, name, sha256) "
                        "VALUES ($1, $2, $3, $4)",
                        projection.name,
                        migration.version,
                        migration.name,
                        checksum(text),
                    )
                applied.append(f"{projection.name}/{migration.name}")
            await apply_views(conn, projection)
    return applied


def _raise_lock_timeout(exc: asyncpg.PostgresError) -> None:
    if isinstance(exc, asyncpg.LockNotAvailableError) and "lock timeout" in str(exc):
        raise _LockTimeout() from exc


async def _lock_holders(conn: asyncpg.Connection, schema: str) -> list[str]:
    """The other sessions holding a lock on a table or view of `schema`, the usual
    reason a migration waits (pg_locks and these columns are visible to every role)."""
    rows = await conn.fetch(
        "SELECT DISTINCT a.pid, a.usename, a.application_name "
        "FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.granted AND n.nspname = $1 AND l.pid <> pg_backend_pid() "
        # Relation OIDs are per database, pg_locks the whole server's.
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "ORDER BY a.pid LIMIT 5",
        schema,
    )
    return _sessions(rows)


def _sessions(rows: Sequence[asyncpg.Record]) -> list[str]:
    """Sessions of pg_stat_activity as a person can find them: pid, user, application."""
    return [f"pid {r['pid']} ({r['usename']}, {r['application_name'] or '?'})" for r in rows]


def checksum(text: str) -> str:
    """The SHA-256 of a migration file's text, as recorded when it is applied."""
    return hashlib.sha256(text.encode()).hexdigest()


async def recorded_checksums(conn: Connection, projector: str) -> dict[int, str | None]:
    """Version -> the checksum recorded when it was applied (None: before they were)."""
    rows = await conn.fetch(
        "SELECT version, sha256 FROM lattice.migrations WHERE projector = $1", projector
    )
    return {row["version"]: row["sha256"] for row in rows}


async def _same_as_applied(
    conn: Connection, projector: str, migration: Migration, text: str, done: dict[int, str | None]
) -> None:
    """Refuse a migration file changed since it was applied here: this database lacks what
    the change adds, and nothing would ever add it (the code would then fail on every
    batch). A row from before checksums were kept takes the file's as it is now."""
    recorded, now = done[migration.version], checksum(text)
    if recorded is None:
        await conn.execute(
            "UPDATE lattice.migrations SET sha256 = $3 WHERE projector = $1 AND version = $2",
            projector,
            migration.version,
            now,
        )
    elif recorded != now:
        raise MigrationError(
            f"{migration.path} was changed after it was applied to this database (recorded "
            f"sha256 {recorded[:12]}, the file's {now[:12]}): an applied migration is never "
            "edited; put the change in a new migration file (and restore this one)"
        )


async def recorded_versions(conn: Connection, projector: str) -> set[int]:
    """The migration versions `lattice.migrations` lists as applied for `projector`."""
    return set(await recorded_checksums(conn, projector))


async def apply_views(conn: asyncpg.Connection, projection: Any) -> None:
    """Run the projection's views.sql (CREATE OR REPLACE VIEW ...) if it has one."""
    views = Path(projection.sql_dir) / "views.sql"
    if views.exists():
        try:
            await conn.execute(views.read_text(encoding="utf-8"))
        except asyncpg.PostgresError as exc:
            _raise_lock_timeout(exc)
            raise MigrationError(f"{views}: {exc}") from exc
