"""The README's column tables name every column the projections' tables have."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import asyncpg
import pytest

from projectors.catalog import discover
from projectors.migrate import migrate
from tests.support.readme import README

pytestmark = pytest.mark.integration

# Bookkeeping the README states once for every table, not per row.
EVERY_TABLE = {"version", "last_event_id", "last_event_created"}
ROW = re.compile(r"^\| `(\w+)` \| `(\w+)`[^|]* \| (.*) \|$")


def described() -> dict[str, tuple[str, str]]:
    """(key, columns cell) by table, from the README's tables headed `table | key |
    columns` (the Connect table says where columns come from, not all of them)."""
    found: dict[str, tuple[str, str]] = {}
    for block in re.split(r"\n(?!\|)", README.read_text()):
        lines = block.strip().splitlines()
        if lines and lines[0].startswith("| table") and lines[0].endswith("| columns |"):
            for line in lines[2:]:
                if match := ROW.match(line):
                    found[match[1]] = (match[2], match[3])
    return found


@pytest.fixture
async def columns(database_url: str) -> AsyncIterator[dict[str, set[str]]]:
    conn = await asyncpg.connect(database_url)
    try:
        schema = "readme_tables"
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await migrate(conn, list(discover().values()), schema=schema, record=False)
        found: dict[str, set[str]] = {}
        for r in await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = $1",
            schema,
        ):
            found.setdefault(r["table_name"], set()).add(r["column_name"])
        yield found
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await conn.close()


def test_the_readme_describes_tables() -> None:
    assert {"subscriptions", "subscription_items", "invoices", "invoice_lines"} <= set(described())


async def test_every_column_of_a_table_the_readme_describes_is_named_there(
    columns: dict[str, set[str]],
) -> None:
    missing = {
        table: sorted(columns[table] - EVERY_TABLE - {key} - set(re.findall(r"`(\w+)`", rest)))
        for table, (key, rest) in described().items()
        if table in columns
    }
    assert {t: m for t, m in missing.items() if m} == {}
    assert described().keys() <= columns.keys()
