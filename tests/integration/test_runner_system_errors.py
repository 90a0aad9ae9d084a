"""Failures of the database or of its schema are not poison: the runner waits them out and
dead-letters nothing (a record-level error, such as a NUL in text, still is poison)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import asyncpg
import orjson
import pytest

from deploy.settings import Settings
from projectors.base import Connection, Record
from projectors.deadletter import HEADER_ERROR
from projectors.failures import is_transient
from projectors.migrate import migrate
from projectors.subscriptions import projection as subscriptions
from tests.conftest import Stack, Topics
from tests.support.audit_projection import (
    Applied,
    AuditProjection,
    applied_counts,
    assert_each_applied_once,
)
from tests.support.kafka import read_all
from tests.support.projectors import log_ends, positions, rows, running
from tests.support.stripe_stream import (
    BASE_TIME,
    event,
    produce,
    records,
    stream,
    subscription,
)
from tests.support.wait import eventually

pytestmark = pytest.mark.integration


def at_log_end(ends: dict[int, int]) -> Callable[[dict[int, int]], bool]:
    """Stored positions at `ends`; a partition that holds no record needs none."""
    return lambda stored: all(stored.get(part, 0) == end for part, end in ends.items())


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
            at_log_end(ends),
            timeout=60,
            what="audit at the log end after the cache came back",
        )
    assert hydrate.failures == 0
    assert await read_all(stack.kafka_bootstrap, topics.dlq) == []


async def test_a_number_past_bigint_is_the_records_fault_not_the_databases(
    settings: Settings, stack: Stack, topics: Topics
) -> None:
    """JSON holds integers past PostgreSQL's bigint, and asyncpg refuses to send one (a
    DataError, before the server sees it). That is this record's fault: dead-lettered, and
    the records after it applied (waiting it out as the database's would retry the batch
    for ever)."""
    good = [e for e in stream(30, seed=5) if e.event["type"] == "customer.subscription.updated"]
    sub_id = "sub_1PgcXhB7WZ01zgkWbigTrial"
    huge = event(
        subscription(sub_id, "cus_QXgHkAzY0Pbl3S", BASE_TIME, "trialing"),
        "customer.subscription.updated",
        BASE_TIME,
        random.Random(9),
    )
    huge.event["data"]["object"]["trial_end"] = 2**63  # JSON takes it; bigint ends at 2**63-1
    body = orjson.dumps(huge.event)
    await produce(
        stack.kafka_bootstrap,
        settings.topic,
        [*records(good[:4]), *records([replace(huge, body=body)]), *records(good[4:])],
    )
    ends = await log_ends(stack.kafka_bootstrap, settings.topic)
    url = settings.require_database_url()
    async with running(settings.model_copy(update={"poison_retries": 2}), [subscriptions]):
        await eventually(
            lambda: positions(url, "subscriptions"),
            at_log_end(ends),
            timeout=30,
            what="subscriptions past the record PostgreSQL cannot take",
        )
    stored = {r[0] for r in await rows(url, "SELECT id FROM projections.subscriptions")}
    assert stored == {e.event["data"]["object"]["id"] for e in good}
    letters = await read_all(stack.kafka_bootstrap, topics.dlq)
    assert [letter.value for letter in letters] == [body]
    assert letters[0].headers[HEADER_ERROR].startswith(b"apply failed after 2 attempts: DataError")


@dataclass(frozen=True)
class _IdleInItsTransaction(AuditProjection):
    """Its first apply leaves the transaction idle for `idle` seconds (as a batch does
    while it waits for a broker to take a dead letter), then says what the next statement
    met."""

    idle: float = 1.5
    met: list[BaseException | None] = field(default_factory=list)

    async def apply(self, conn: Connection, changes: Sequence[Applied]) -> None:
        await super().apply(conn, changes)
        if self.met:
            return
        await asyncio.sleep(self.idle)
        try:
            await conn.execute("SELECT 1")
        except BaseException as exc:
            self.met.append(exc)
            raise
        self.met.append(None)


async def test_a_session_the_server_ends_through_the_urls_settings_is_a_batch_tried_again(
    settings: Settings, stack: Stack, topics: Topics
) -> None:
    """The README's advice for a database that hangs: settings in the URL reach the
    server, which ends a session idle in its transaction; the runner takes that as the
    database's failure, and the batch is applied once, on a new connection."""
    await produce(stack.kafka_bootstrap, settings.topic, records(stream(30, seed=6)))
    ends = await log_ends(stack.kafka_bootstrap, settings.topic)
    url = settings.require_database_url()
    with_timeout = f"{url}?tcp_keepalives_idle=60&idle_in_transaction_session_timeout=300"
    audit = _IdleInItsTransaction()
    async with running(settings.model_copy(update={"database_url": with_timeout}), [audit]):
        await eventually(
            lambda: positions(url, "audit"),
            at_log_end(ends),
            timeout=60,
            what="audit at the log end after its session was ended",
        )
    assert len(audit.met) == 1
    assert isinstance(audit.met[0], asyncpg.PostgresConnectionError | asyncpg.InterfaceError)
    await assert_each_applied_once(url, sum(ends.values()))
    assert await read_all(stack.kafka_bootstrap, topics.dlq) == []
