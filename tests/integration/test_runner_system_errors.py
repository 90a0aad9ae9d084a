"""Failures of the database or of its schema are not poison: the runner waits them out and
dead-letters nothing (a record-level error, such as a NUL in text, still is poison)."""

from __future__ import annotations

from dataclasses import replace

import asyncpg
import orjson
import pytest

from deploy.settings import Settings
from projectors.base import Record
from projectors.failures import is_transient
from projectors.migrate import migrate
from tests.conftest import Stack, Topics
from tests.support.audit_projection import AuditProjection, applied_counts
from tests.support.kafka import read_all
from tests.support.projectors import log_ends, positions, running
from tests.support.stripe_stream import produce, records, stream
from tests.support.wait import eventually

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("sqlstate", "transient"),
    [
        ("42P01", True),  # undefined table: a migration not deployed yet
        ("42703", True),  # undefined column
        ("42501", True),  # permission denied
        ("55P03", True),  # lock not available
        ("57P03", True),  # cannot connect now: the server is starting up
        ("53300", True),  # too many connections
        ("40001", True),  # serialization failure
        ("22P05", False),  # untranslatable character: this record's data
        ("23505", False),  # unique violation
        ("22003", False),  # numeric value out of range
    ],
)
def test_sqlstate_decides_between_waiting_and_dead_lettering(
    sqlstate: str, transient: bool
) -> None:
    error = asyncpg.PostgresError.new({"C": sqlstate, "M": "test", "S": "ERROR"})
    assert is_transient(error) is transient


async def test_a_missing_table_makes_the_runner_wait_not_dead_letter(
    settings: Settings, stack: Stack, topics: Topics
) -> None:
    audit = AuditProjection()
    url = settings.require_database_url()
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn, [audit])
        # A schema the code does not match, as in a half-done deploy: every apply fails.
        await conn.execute("ALTER TABLE projections.audit_applied RENAME TO audit_parked")
        await produce(stack.kafka_bootstrap, settings.topic, records(stream(60, seed=4)))
        ends = await log_ends(stack.kafka_bootstrap, settings.topic)
        async with running(settings, [audit]):
            # The runner keeps failing and retrying; give it time to dead-letter if it would.
            await eventually(
                lambda: _database_errors_logged(url),
                timeout=30,
                what="the runner retrying against the missing table",
            )
            assert await positions(url, "audit") in ({}, dict.fromkeys(ends, 0))
            await conn.execute("ALTER TABLE projections.audit_parked RENAME TO audit_applied")
            await eventually(
                lambda: positions(url, "audit"),
                lambda p: p == ends,
                timeout=60,
                what="audit at the log end once the table is back",
            )
        counts = await applied_counts(conn)
        assert sum(counts.values()) == sum(ends.values())
        assert set(counts.values()) == {1}
    finally:
        await conn.close()
    assert await read_all(stack.kafka_bootstrap, topics.dlq) == []


async def _database_errors_logged(url: str) -> bool:
    # The failing statement runs in the runner's transaction; pg_stat_database counts each
    # rolled-back one, so a growing count shows the retries happen.
    conn = await asyncpg.connect(url)
    try:
        rollbacks = await conn.fetchval(
            "SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        )
    finally:
        await conn.close()
    return bool(rollbacks and rollbacks >= 3)


class _CacheDown:
    """A hydrator whose cache (PostgreSQL) is starting up for its first calls."""

    def __init__(self, failures: int) -> None:
        self.failures = failures

    async def __call__(self, record: Record) -> Record:
        if self.failures > 0:
            self.failures -= 1
            raise asyncpg.exceptions.CannotConnectNowError("the database system is starting up")
        full = {**orjson.loads(record.value), "data": {"developer_message_summary": "x"}}
        return replace(record, value=orjson.dumps(full))


async def test_a_database_error_while_hydrating_is_waited_out(
    settings: Settings, stack: Stack, topics: Topics
) -> None:
    thin = orjson.dumps(
        {
            "id": "evt_test_65RCnGmBVrD1OFeVNAe",
            "object": "v2.core.event",
            "type": "v1.billing.meter.no_meter_found",
            "created": "2026-11-25T10:00:00.123Z",
            "livemode": False,
            "related_object": {
                "id": "mtr_test_61RCnGm0lsqjBjyQg41",
                "type": "billing.meter",
                "url": "/v1/billing/meters/mtr_test_61RCnGm0lsqjBjyQg41",
            },
        }
    )
    await produce(stack.kafka_bootstrap, settings.topic, [thin])
    ends = await log_ends(stack.kafka_bootstrap, settings.topic)
    url = settings.require_database_url()
    hydrate = _CacheDown(failures=3)
    audit = AuditProjection(hydrate_thin_events=True)
    async with running(settings, [audit], hydrate=hydrate):
        await eventually(
            lambda: positions(url, "audit"),
            lambda p: all(p.get(partition, 0) == end for partition, end in ends.items()),
            timeout=60,
            what="audit at the log end after the cache came back",
        )
    assert hydrate.failures == 0
    assert await read_all(stack.kafka_bootstrap, topics.dlq) == []
