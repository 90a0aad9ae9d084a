"""deploy/sql/roles.sql on the real PostgreSQL: the writer runs Lattice, analysts only read."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from projectors import catalog
from projectors.migrate import migrate
from tests.faults.services import start_private_postgres
from tests.support.homes import server_home
from tests.support.projectors import as_user

pytestmark = pytest.mark.integration

ROLES_SQL = Path(__file__).resolve().parents[2] / "deploy" / "sql" / "roles.sql"


@contextlib.asynccontextmanager
async def _connected(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


async def _run_roles_sql(url: str) -> None:
    async with _connected(url) as admin:
        for _ in range(2):  # safe to run again
            await admin.execute(ROLES_SQL.read_text())


async def _writer_owns_projections(url: str, projections: list[str]) -> None:
    async with _connected(as_user(url, "lattice_writer")) as writer:
        await migrate(writer, catalog.select(projections))
        owner = await writer.fetchval(
            "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'projections'"
        )
        assert owner == "lattice_writer"


async def test_writer_owns_projections_and_analyst_only_reads(database_url: str) -> None:
    await _run_roles_sql(database_url)
    await _writer_owns_projections(database_url, [])
    async with _connected(as_user(database_url, "lattice_writer")) as writer:
        # A table a later migration adds: readable without another GRANT.
        await writer.execute("CREATE TABLE projections.added_later (id text)")
        await writer.execute("INSERT INTO projections.added_later VALUES ('row')")

    async with _connected(as_user(database_url, "lattice_analyst")) as analyst:
        assert await analyst.fetchval("SELECT count(*) FROM subscriptions") == 0
        assert await analyst.fetchval("SELECT count(*) FROM projections.added_later") == 1
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await analyst.execute("DELETE FROM added_later")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await analyst.fetch("SELECT * FROM lattice.offsets")


async def test_a_managed_services_admin_who_is_no_superuser_can_run_it() -> None:
    """RDS, Cloud SQL, Azure: the admin has CREATEROLE and CREATEDB, not superuser. Since
    PostgreSQL 16 creating a role does not make its creator a member, and handing it a
    schema needs membership. On a server of its own: the roles are the cluster's."""
    with server_home("pg-roles") as home:
        server = start_private_postgres(home)
        try:
            async with _connected(server.url("postgres")) as root:
                await root.execute("CREATE ROLE cloud_admin LOGIN CREATEROLE CREATEDB")
            async with _connected(as_user(server.url("postgres"), "cloud_admin")) as admin:
                await admin.execute("CREATE DATABASE managed")
            await _run_roles_sql(as_user(server.url("managed"), "cloud_admin"))
            await _writer_owns_projections(server.url("managed"), ["invoices"])
            async with _connected(as_user(server.url("managed"), "lattice_analyst")) as analyst:
                assert await analyst.fetchval("SELECT count(*) FROM invoices") == 0
        finally:
            server.stop()
