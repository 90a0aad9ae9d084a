"""deploy/sql/roles.sql on the real PostgreSQL: the writer runs Lattice, analysts only read."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from projectors import catalog
from projectors.migrate import migrate
from tests.faults.services import start_private_postgres
from tests.support.homes import server_home

pytestmark = pytest.mark.integration

ROLES_SQL = Path(__file__).resolve().parents[2] / "deploy" / "sql" / "roles.sql"


def _as(url: str, user: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{user}@{parts.hostname}:{parts.port}"))


async def test_writer_owns_projections_and_analyst_only_reads(database_url: str) -> None:
    admin = await asyncpg.connect(database_url)
    try:
        for _ in range(2):  # safe to run again
            await admin.execute(ROLES_SQL.read_text())
    finally:
        await admin.close()

    writer = await asyncpg.connect(_as(database_url, "lattice_writer"))
    try:
        await migrate(writer, catalog.select([]))
        # A table a later migration adds: readable without another GRANT.
        await writer.execute("CREATE TABLE projections.added_later (id text)")
        await writer.execute("INSERT INTO projections.added_later VALUES ('row')")
        owner = await writer.fetchval(
            "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'projections'"
        )
        assert owner == "lattice_writer"
    finally:
        await writer.close()

    analyst = await asyncpg.connect(_as(database_url, "lattice_analyst"))
    try:
        assert await analyst.fetchval("SELECT count(*) FROM subscriptions") == 0
        assert await analyst.fetchval("SELECT count(*) FROM projections.added_later") == 1
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await analyst.execute("DELETE FROM added_later")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await analyst.fetch("SELECT * FROM lattice.offsets")
    finally:
        await analyst.close()


async def test_a_managed_services_admin_who_is_no_superuser_can_run_it() -> None:
    """RDS, Cloud SQL, Azure: the admin has CREATEROLE and CREATEDB, not superuser. Since
    PostgreSQL 16 creating a role does not make its creator a member, and handing it a
    schema needs membership. On a server of its own: the roles are the cluster's."""
    with server_home("pg-roles") as home:
        server = start_private_postgres(home)
        try:
            root = await asyncpg.connect(server.url("postgres"))
            try:
                await root.execute("CREATE ROLE cloud_admin LOGIN CREATEROLE CREATEDB")
            finally:
                await root.close()
            admin = await asyncpg.connect(_as(server.url("postgres"), "cloud_admin"))
            try:
                await admin.execute("CREATE DATABASE managed")
            finally:
                await admin.close()
            url = _as(server.url("managed"), "cloud_admin")
            admin = await asyncpg.connect(url)
            try:
                for _ in range(2):  # safe to run again
                    await admin.execute(ROLES_SQL.read_text())
            finally:
                await admin.close()
            writer = await asyncpg.connect(_as(server.url("managed"), "lattice_writer"))
            try:
                await migrate(writer, catalog.select(["invoices"]))
                owner = await writer.fetchval(
                    "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'projections'"
                )
                assert owner == "lattice_writer"
            finally:
                await writer.close()
            analyst = await asyncpg.connect(_as(server.url("managed"), "lattice_analyst"))
            try:
                assert await analyst.fetchval("SELECT count(*) FROM invoices") == 0
            finally:
                await analyst.close()
        finally:
            server.stop()
