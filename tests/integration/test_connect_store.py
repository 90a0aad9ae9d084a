"""The connect store against a real PostgreSQL: each of the issue's scenarios, the README's
queries, and the same tables and balances from any shuffle or duplication of the log."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projectors.base import Record
from projectors.connect import projection
from projectors.connect.fold import fold, ledger
from projectors.migrate import migrate
from tests.fixtures import connect_streams as streams
from tests.fixtures.connect_objects import (
    account,
    application,
    transfer,
    transfer_reversal,
)
from tests.fixtures.records import as_record
from tests.fixtures.stripe_objects import T0, event, new_id
from tests.support.readme import readme_query
from tests.support.wait import eventually

pytestmark = pytest.mark.integration

TABLES = {
    "connect_accounts": "id",
    "transfers": "id",
    "transfer_reversals": "id",
    "connect_charges": "id",
    "application_fees": "id",
    "application_fee_refunds": "id",
    "connect_payouts": "id",
    "connect_ledger": "kind, source_id",
    "connect_balances": "account, currency",
}
BALANCES = """
SELECT account, currency, transferred, reversed, application_fees, refunded_fees, paid_out, net
FROM connect_balances
"""
# The README's "which accounts cannot be paid".
CANNOT_BE_PAID = """
SELECT id, disabled_reason, requirements_currently_due, deauthorized
FROM connect_accounts WHERE payouts_enabled IS NOT TRUE OR deauthorized ORDER BY id
"""
_schemas = itertools.count()


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


def records(events: Sequence[dict[str, Any]]) -> list[Record]:
    return [as_record(evt, offset=i) for i, evt in enumerate(events)]


async def project(
    conn: asyncpg.Connection, batches: Sequence[Sequence[Record]], *, schema: str = "projections"
) -> None:
    """Migrate `schema` (idempotent), then apply each batch in its own transaction."""
    await migrate(conn, [projection], schema=schema, record=schema == "projections")
    for batch in batches:
        changes = [change for record in batch for change in projection.reduce(record)]
        async with conn.transaction():
            await conn.execute(f"SET LOCAL search_path TO {schema}, public")
            await projection.apply(conn, changes)


async def fetch(
    conn: asyncpg.Connection, query: str, *args: Any, schema: str = "projections"
) -> list[tuple[Any, ...]]:
    async with conn.transaction():
        await conn.execute(f"SET LOCAL search_path TO {schema}, public")
        return [tuple(row) for row in await conn.fetch(query, *args)]


async def balances(conn: asyncpg.Connection, schema: str = "projections") -> dict[Any, Any]:
    return {(r[0], r[1]): r[2:] for r in await fetch(conn, BALANCES, schema=schema)}


async def everything(conn: asyncpg.Connection, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    return {
        table: await fetch(conn, f"SELECT * FROM {table} ORDER BY {key}", schema=schema)
        for table, key in TABLES.items()
    }


async def test_destination_charge_then_partial_and_full_reversal(
    conn: asyncpg.Connection,
) -> None:
    stream = streams.destination_charge_reversed(amount=10_000, partial=3_000)
    acct, tr = stream.ids["account"], stream.ids["transfer"]
    recs = records(stream.events)

    await project(conn, [[r] for r in recs[:4]])
    assert await balances(conn) == {(acct, "usd"): (10_000, 3_000, 0, 0, 0, 7_000)}
    await project(conn, [[r] for r in recs[4:]])

    assert await balances(conn) == stream.expected
    assert await fetch(
        conn, "SELECT destination, amount, amount_reversed, reversed FROM transfers"
    ) == [(acct, 10_000, 10_000, True)]
    assert await fetch(conn, "SELECT id, amount FROM transfer_reversals ORDER BY amount") == [
        (stream.ids["r1"], 3_000),
        (stream.ids["r2"], 7_000),
    ]
    assert await fetch(
        conn, "SELECT charge, transfer, linked_by FROM connect_charge_transfers"
    ) == [(stream.ids["charge"], tr, "charge")]
    assert await fetch(
        conn,
        "SELECT amount_refunded, refunded FROM connect_charges WHERE id = $1",
        stream.ids["charge"],
    ) == [(10_000, True)]


async def test_separate_charge_and_transfers_share_a_transfer_group(
    conn: asyncpg.Connection,
) -> None:
    stream = streams.separate_charge_and_transfers()
    await project(conn, [records(stream.events)])

    assert await balances(conn) == stream.expected
    linked = await fetch(
        conn,
        "SELECT transfer, destination, amount FROM connect_charge_transfers "
        "WHERE transfer_group = $1 ORDER BY amount DESC",
        stream.ids["group"],
    )
    assert linked == [
        (stream.ids["to_a"], stream.ids["a"], 7_000),
        (stream.ids["to_b"], stream.ids["b"], 2_000),
    ]


async def test_direct_charge_with_application_fee_and_fee_refund(
    conn: asyncpg.Connection,
) -> None:
    stream = streams.direct_charge_with_fee(fee=500, refunded=200)
    acct = stream.ids["account"]
    charge, created, refunded, refund_updated = records(stream.events)

    # The refund's own event first: its fee (and so its account) is not known yet.
    await project(conn, [[refund_updated], [charge]])
    assert await balances(conn) == {}
    await project(conn, [[created], [refunded]])

    assert await balances(conn) == stream.expected
    assert await fetch(
        conn, "SELECT kind, source_id, account, amount FROM connect_ledger ORDER BY kind"
    ) == [
        ("application_fee", stream.ids["fee"], acct, -500),
        ("fee_refund", stream.ids["fee_refund"], acct, 200),
    ]
    assert await fetch(conn, "SELECT account, application_fee FROM connect_charges") == [
        (acct, stream.ids["fee"])
    ]
    assert await fetch(conn, "SELECT amount_refunded, refunded FROM application_fees") == [
        (200, False)
    ]


async def test_an_account_debit_leaves_the_account_and_reaches_no_platform_row(
    conn: asyncpg.Connection,
) -> None:
    stream = streams.account_debited(funded=10_000, debit=3_000, back=1_000)
    acct = stream.ids["account"]

    await project(conn, [records(stream.events)])

    assert await balances(conn) == stream.expected
    assert await fetch(conn, "SELECT account, debited FROM connect_balances") == [(acct, 2_000)]
    # As a version without debits booked it (to the platform, as a transfer): migration
    # 0002 books it again.
    await conn.execute(
        "UPDATE projections.connect_ledger SET kind = 'transfer', account = $1, "
        "amount = -amount WHERE kind = 'debit'",
        stream.ids["platform"],
    )
    await conn.execute(
        "UPDATE projections.connect_ledger SET kind = 'reversal', account = $1, "
        "amount = -amount WHERE kind = 'debit_reversal'",
        stream.ids["platform"],
    )
    assert (stream.ids["platform"], "usd") in await balances(conn)
    async with conn.transaction():
        await conn.execute("SET LOCAL search_path TO projections")
        await conn.execute((projection.sql_dir / "0002_connect_debits.sql").read_text())
    assert await balances(conn) == stream.expected
    assert await fetch(conn, "SELECT account, debited FROM connect_balances") == [(acct, 2_000)]


async def test_a_reversal_the_log_never_had_is_found_by_the_readme_query(
    conn: asyncpg.Connection,
) -> None:
    """A transfer lists its 10 most recent reversals: one whose own event the log lacks is
    not booked once ten newer ones exist, and the README's query names that transfer."""
    acct, tr_id = new_id("acct"), new_id("tr")
    reversals = [
        transfer_reversal(transfer=tr_id, amount=1_000, created=T0 + n * 60) for n in range(12)
    ]
    latest = transfer(id=tr_id, destination=acct, amount=12_000, reversals=reversals)
    latest["reversals"].update(data=reversals[:1:-1], has_more=True)  # newest first, ten
    await project(
        conn,
        [
            records(
                [
                    event("transfer.created", transfer(id=tr_id, destination=acct, amount=12_000)),
                    event("transfer.reversed", latest, created=T0 + 11 * 60),
                ]
            )
        ],
    )

    query = readme_query("SELECT t.id, t.amount_reversed", "coalesce(sum(r.amount), 0);")
    assert await fetch(conn, query) == [(tr_id, 12_000, 10_000)]
    assert await balances(conn) == {(acct, "usd"): (12_000, 10_000, 0, 0, 0, 2_000)}


async def test_payout_paid_then_failed(conn: asyncpg.Connection) -> None:
    stream = streams.payout_paid_then_failed(amount=4_000)
    acct, po = stream.ids["account"], stream.ids["payout"]
    recs = records(stream.events)

    await project(conn, [[r] for r in recs[:4]])
    assert await balances(conn) == {(acct, "usd"): (4_000, 0, 0, 0, 4_000, 0)}
    await project(conn, [recs[4:]])

    assert await balances(conn) == stream.expected
    assert await fetch(
        conn, "SELECT account, status, failure_code FROM connect_payouts WHERE id = $1", po
    ) == [(acct, "failed", "account_closed")]
    assert await fetch(
        conn,
        "SELECT kind, amount, event_id FROM connect_ledger WHERE source_id = $1 ORDER BY kind",
        po,
    ) == [
        ("payout", -4_000, stream.events[3]["id"]),
        ("payout_failed", 4_000, stream.events[4]["id"]),
    ]
    assert await fetch(
        conn, "SELECT last_event_id FROM connect_balances WHERE account = $1", acct
    ) == [(stream.events[4]["id"],)]


async def test_account_losing_payouts_enabled_cannot_be_paid(conn: asyncpg.Connection) -> None:
    stream = streams.account_loses_payouts(due=("external_account", "tos_acceptance.date"))
    acct = stream.ids["account"]
    enabled, disabled = records(stream.events)

    await project(conn, [[enabled]])
    assert await fetch(conn, CANNOT_BE_PAID) == []
    # The older, enabled snapshot delivered again afterwards changes nothing.
    await project(conn, [[disabled], [enabled]])

    assert await fetch(conn, CANNOT_BE_PAID) == [
        (acct, "requirements.past_due", ["external_account", "tos_acceptance.date"], False)
    ]


async def test_deauthorized_account_stays_deauthorized_after_a_late_update(
    conn: asyncpg.Connection,
) -> None:
    acct = "acct_deauth"
    deauth = event("account.application.deauthorized", application(), created=T0 + 10, account=acct)
    update = event("account.updated", account(id=acct), created=T0 + 5, account=acct)
    await project(conn, [records([deauth]), records([update])])

    assert await fetch(conn, CANNOT_BE_PAID) == [(acct, None, [], True)]
    assert await fetch(conn, "SELECT last_event_id FROM connect_accounts") == [(deauth["id"],)]


EVERYTHING = streams.everything()
RECORDS = records(EVERYTHING.events)


@st.composite
def shuffled_batches(draw: st.DrawFn) -> list[list[Record]]:
    extra = draw(st.lists(st.sampled_from(RECORDS), max_size=len(RECORDS)))
    stream = draw(st.permutations(RECORDS + extra))
    size = draw(st.integers(min_value=1, max_value=len(stream)))
    return [stream[i : i + size] for i in range(0, len(stream), size)]


@pytest.mark.slow
@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=shuffled_batches())
async def test_any_order_and_duplication_gives_the_same_tables(
    conn: asyncpg.Connection, batches: list[list[Record]]
) -> None:
    # Each example gets a fresh schema in the per-test database; the reference is the
    # ordered stream, one event per batch, in its own schema.
    reference = f"ordered_{next(_schemas)}"
    shuffled = f"shuffled_{next(_schemas)}"
    await project(conn, [[r] for r in RECORDS], schema=reference)
    await project(conn, batches, schema=shuffled)

    assert await everything(conn, shuffled) == await everything(conn, reference)
    assert await balances(conn, shuffled) == EVERYTHING.expected
    expected_ledger = ledger(fold(c for r in RECORDS for c in projection.reduce(r)))
    got = await fetch(
        conn,
        "SELECT kind, source_id, account, currency, amount, created, event_id, "
        "last_event_created FROM connect_ledger",
        schema=shuffled,
    )
    assert {(r[0], r[1]): r[2:] for r in got} == {
        key: (e.account, e.currency, e.amount, e.created, e.last_event_id, e.last_event_created)
        for key, e in expected_ledger.items()
    }


async def test_replaying_the_log_adds_nothing(conn: asyncpg.Connection) -> None:
    await project(conn, [RECORDS])
    once = await everything(conn, "projections")
    await project(conn, [RECORDS, RECORDS[::-1]])
    assert await everything(conn, "projections") == once


async def test_fee_and_refund_written_by_two_consumers_at_once_are_booked(
    conn: asyncpg.Connection, database_url: str
) -> None:
    # The refund's own event is keyed by its fr_ id, the fee's by its fee_ id: with two
    # projector processes they are applied in concurrent transactions.
    stream = streams.direct_charge_with_fee(fee=500, refunded=200)
    _, created, _, refund_updated = records(stream.events)
    await migrate(conn, [projection])
    other = await asyncpg.connect(database_url)
    try:
        first = conn.transaction()
        await first.start()
        await conn.execute("SET LOCAL search_path TO projections, public")
        await projection.apply(conn, projection.reduce(refund_updated))

        async def second() -> None:
            async with other.transaction():
                await other.execute("SET LOCAL search_path TO projections, public")
                await projection.apply(other, projection.reduce(created))

        writing = asyncio.create_task(second())

        async def second_done_or_waiting() -> bool:
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            return writing.done() or waiting > 0

        await eventually(second_done_or_waiting, what="the second writer done or waiting")
        await first.commit()
        await writing
    finally:
        await other.close()

    assert await balances(conn) == stream.expected
