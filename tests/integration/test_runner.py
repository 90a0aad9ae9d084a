"""The projector runner against the real broker and database: exactly-once application,
resuming from stored positions, dead letters, migrations."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, cast

import asyncpg
import orjson
import pytest
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import MessageSizeTooLargeError

from deploy.settings import ConfigError, Settings
from ingest.publisher import COMPRESSION
from ingest.record import build_record
from projectors import intake, offsets, status
from projectors import runner as runner_module
from projectors.base import HydrationUnavailable, PoisonRecord, Record
from projectors.batch import BatchApplier
from projectors.deadletter import (
    HEADER_ERROR,
    HEADER_ORIGIN_OFFSET,
    HEADER_ORIGIN_PARTITION,
    HEADER_ORIGIN_TOPIC,
    HEADER_PROJECTOR,
    DeadLetter,
)
from projectors.events import projection as events
from projectors.hydration_gate import Hydrate
from projectors.metrics import RuntimeMetrics
from projectors.migrate import (
    ADVISORY_LOCK_KEY,
    MigrationError,
    checksum,
    ensure_runtime,
    migrate,
)
from projectors.offsets import PositionConflict
from projectors.rebalance import SeekToStored
from projectors.runner import ProjectionRunner
from projectors.service import run_projections
from projectors.subscriptions import projection as subscriptions
from projectors.topic_partitions import check_stored_positions
from tests.conftest import Stack, Topics
from tests.integration.test_receiver import subscription_event
from tests.support.audit_projection import (
    AuditProjection,
    NoDeadLetters,
    applied_counts,
    assert_each_applied_once,
)
from tests.support.kafka import delete_records_before, read_all
from tests.support.projectors import log_ends, positions, rows, running
from tests.support.stripe_stream import BASE_TIME, event, invoice, produce, records, stream
from tests.support.wait import eventually

pytestmark = pytest.mark.integration


async def _caught_up(settings: Settings, name: str) -> None:
    ends = await log_ends(settings.kafka_bootstrap, settings.topic)
    url = settings.require_database_url()
    await eventually(
        lambda: positions(url, name),
        lambda p: p == ends,
        timeout=30,
        what=f"{name} at the log end {ends}",
    )


async def test_applies_every_record_once_and_resumes_from_stored_positions(
    settings: Settings, stack: Stack
) -> None:
    stream_ = stream(300)
    url = settings.require_database_url()
    await produce(stack.kafka_bootstrap, settings.topic, records(stream_[:180]))
    async with running(settings, [events, AuditProjection()]):
        await _caught_up(settings, "events")
        await _caught_up(settings, "audit")
    await produce(stack.kafka_bootstrap, settings.topic, records(stream_[180:]))
    async with running(settings, [events, AuditProjection()]):
        await _caught_up(settings, "events")
        await _caught_up(settings, "audit")

    await assert_each_applied_once(url, len(stream_))
    ids = {e.event["id"] for e in stream_}
    assert {r[0] for r in await rows(url, "SELECT id FROM projections.events")} == ids

    first = stream_[0].event
    (row,) = await rows(
        url,
        f"SELECT type, object_id, account, livemode, api_version, "
        f"extract(epoch FROM created)::bigint, last_event_id "
        f"FROM projections.events WHERE id = '{first['id']}'",
    )
    assert row == (
        first["type"],
        first["data"]["object"]["id"],
        first.get("account"),
        False,
        first["api_version"],
        first["created"],
        first["id"],
    )
    thin = next(e.event for e in stream_ if e.event["object"] == "v2.core.event")
    (thin_row,) = await rows(
        url,
        "SELECT object_id, extract(epoch FROM created)::bigint "
        f"FROM projections.events WHERE id = '{thin['id']}'",
    )
    assert thin_row == (thin["related_object"]["id"], BASE_TIME + 49)


async def test_a_runner_idle_at_the_log_end_heals_when_its_stored_positions_go_back(
    settings: Settings, stack: Stack
) -> None:
    """PostgreSQL restored from an older backup: rows and positions both go back in time.
    No new record arrives to fail a compare-and-set; the idle runner must notice by itself
    and apply again what the backup lacks, once."""
    stream_ = stream(120, seed=5)
    url = settings.require_database_url()
    await produce(stack.kafka_bootstrap, settings.topic, records(stream_))
    async with running(settings, [AuditProjection()]):
        await _caught_up(settings, "audit")
        ends = await log_ends(settings.kafka_bootstrap, settings.topic)
        partition = max(ends, key=lambda p: ends[p])
        back = ends[partition] // 2
        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction():  # the "restore", as one snapshot
                await conn.execute(
                    "DELETE FROM projections.audit_applied "
                    "WHERE partition = $1 AND kafka_offset >= $2",
                    partition,
                    back,
                )
                await conn.execute(
                    "UPDATE lattice.offsets SET next_offset = $2 "
                    "WHERE projector = 'audit' AND partition = $1",
                    partition,
                    back,
                )
            await _caught_up(settings, "audit")
            counts = await applied_counts(conn)
        finally:
            await conn.close()
    assert len(counts) == len(stream_), "the records the restore took back were not applied"
    assert set(counts.values()) == {1}, "a record was applied twice"


async def test_poison_records_go_to_the_dead_letter_topic_and_later_records_apply(
    settings: Settings, stack: Stack, topics: Topics
) -> None:
    good = stream(40, seed=11)
    # Not JSON: the reducer refuses it. A NUL in a text column: PostgreSQL refuses the row,
    # only that row, so the runner finds it with per-record savepoints.
    unparseable = b'{"id": "evt_broken", "object": "event", '
    nul_event = event(
        invoice("in_NUL", "cus_NUL", "sub_NUL", BASE_TIME, "paid"),
        "invoice.paid",
        BASE_TIME,
        random.Random(3),
    )
    nul_event.event["id"] = "evt_with\u0000nul"
    nul_body = orjson.dumps(nul_event.event)
    nul_record = build_record(
        nul_body, nul_event.event, endpoint="platform", received_at=datetime.now(UTC)
    )
    await produce(
        stack.kafka_bootstrap,
        settings.topic,
        [*records(good[:20]), unparseable, nul_record, *records(good[20:])],
    )
    tuned = settings.model_copy(update={"poison_retries": 2})
    async with running(tuned, [events]):
        await _caught_up(settings, "events")

    url = settings.require_database_url()
    assert {r[0] for r in await rows(url, "SELECT id FROM projections.events")} == {
        e.event["id"] for e in good
    }
    letters = await read_all(stack.kafka_bootstrap, topics.dlq)
    assert sorted(r.value for r in letters if r.value) == sorted([unparseable, nul_body])
    log = await read_all(stack.kafka_bootstrap, settings.topic)
    origin = {r.value: r for r in log}
    for letter in letters:
        assert letter.value is not None
        source = origin[letter.value]
        assert letter.headers[HEADER_PROJECTOR] == b"events"
        assert letter.headers[HEADER_ORIGIN_TOPIC] == settings.topic.encode()
        assert letter.headers[HEADER_ORIGIN_PARTITION] == str(source.partition).encode()
        assert letter.headers[HEADER_ORIGIN_OFFSET] == str(source.offset).encode()
        assert letter.key == source.key
        # Not JSON is a verdict, given at once; a row PostgreSQL refused is tried again.
        said = (
            b"reduce failed after 1 attempt"
            if letter.value == unparseable
            else b"apply failed after 2 attempts"
        )
        assert letter.headers[HEADER_ERROR].startswith(said)
    report = await status.collect(settings, [events])
    assert sum(s.dead_letters for s in report) == 2
    assert all(s.lag == 0 for s in report)


async def test_records_applied_again_do_not_send_their_dead_letters_again(
    settings: Settings, stack: Stack, topics: Topics
) -> None:
    """A replay's swap (or a restore) moves a live runner's positions back over a record
    it already dead-lettered: applying it again must not send a second dead letter."""
    good = stream(30, seed=12)
    unparseable = b'{"id": "evt_broken_again", "object": "event", '
    await produce(stack.kafka_bootstrap, settings.topic, [*records(good), unparseable])
    tuned = settings.model_copy(update={"poison_retries": 1})
    async with running(tuned, [events]):
        await _caught_up(settings, "events")
    url = settings.require_database_url()
    await rows(url, "UPDATE lattice.offsets SET next_offset = 0 WHERE projector = 'events'")
    metrics = RuntimeMetrics()
    async with running(tuned, [events], metrics=metrics):
        await _caught_up(settings, "events")

    letters = await read_all(stack.kafka_bootstrap, topics.dlq)
    assert [r.value for r in letters] == [unparseable]
    # Nor does the dead-letters counter count it again (an alert would fire for nothing).
    sent = metrics.registry.get_sample_value(
        "lattice_projector_dead_letters_total", {"projector": "events"}
    )
    assert sent in (None, 0.0)
    # ... while that runner did count into these metrics (the records it applied again).
    applied = metrics.registry.get_sample_value(
        "lattice_projector_events_applied_total", {"projector": "events"}
    )
    assert applied is not None
    assert applied >= len(good)
    assert len(await rows(url, "SELECT id FROM projections.events")) == len(
        {e.event["id"] for e in good}
    )


async def test_a_record_as_large_as_the_receiver_takes_is_dead_lettered_not_a_crash(
    settings: Settings, stack: Stack, topics: Topics
) -> None:
    """The receiver appends bodies up to `max_body_bytes` (1 MiB), compressed; the log
    takes them. Its dead letter is the same value compressed the same way, so the broker
    takes it too; aiokafka's own size check, which counts the value uncompressed, must
    not refuse it first (the runner would stop, restart and stop again on that record)."""
    head = b'{"id": "evt_large", "object": "event", "data": {"object": {"note": "'
    large = (head + b"abc " * settings.max_body_bytes)[: settings.max_body_bytes]
    producer = AIOKafkaProducer(
        bootstrap_servers=stack.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        compression_type=COMPRESSION,
        max_request_size=2 * settings.max_body_bytes,
    )
    await producer.start()
    try:
        await producer.send_and_wait(settings.topic, value=large, key=b"evt_large")
    finally:
        await producer.stop()
    good = stream(10, seed=14)
    await produce(stack.kafka_bootstrap, settings.topic, records(good))
    async with running(settings.model_copy(update={"poison_retries": 1}), [events]):
        await _caught_up(settings, "events")

    letters = await read_all(stack.kafka_bootstrap, topics.dlq)
    assert [r.value for r in letters] == [large]
    assert (
        len(await rows(settings.require_database_url(), "SELECT id FROM projections.events")) == 10
    )


async def test_an_incompressible_record_at_the_logs_limit_is_dead_lettered_not_a_crash(
    settings: Settings, stack: Stack, topics: Topics
) -> None:
    """A record the log took with a byte to spare, one that compression cannot shrink:
    its letter adds headers (error, origin) and must still fit the dead-letter topic,
    or the runner stops on that record at every start."""
    producer = AIOKafkaProducer(  # not idempotent: a refused batch would break its sequence
        bootstrap_servers=stack.kafka_bootstrap,
        acks="all",
        compression_type=COMPRESSION,
        max_request_size=4 * settings.max_body_bytes,
    )
    await producer.start()
    try:
        # The largest random value the log takes (the broker's default limit, 1 MiB + 12
        # bytes, counts the whole batch): found by trying, in steps of 64 bytes.
        size, large = 1_048_588, b""
        while not large:
            value = random.Random(size).randbytes(size)
            try:
                await producer.send_and_wait(settings.topic, value=value, key=b"evt_noise")
                large = value
            except MessageSizeTooLargeError:
                size -= 64
    finally:
        await producer.stop()
    await produce(stack.kafka_bootstrap, settings.topic, records(stream(10, seed=15)))
    async with running(settings.model_copy(update={"poison_retries": 1}), [events]):
        await _caught_up(settings, "events")

    letters = await read_all(stack.kafka_bootstrap, topics.dlq)
    assert [r.value for r in letters] == [large]
    assert letters[0].headers[HEADER_ERROR].startswith(b"reduce failed")


async def test_migrations_apply_once_even_when_two_processes_race(settings: Settings) -> None:
    url = settings.require_database_url()
    projections = [events, AuditProjection()]
    first, second = await asyncpg.connect(url), await asyncpg.connect(url)
    try:
        applied = await asyncio.gather(migrate(first, projections), migrate(second, projections))
        assert sorted(applied[0] + applied[1]) == ["audit/0001_audit", "events/0001_events"]
        assert await migrate(first, projections) == []
        recorded = await first.fetch("SELECT projector, version FROM lattice.migrations")
        assert sorted(tuple(r) for r in recorded) == [("audit", 1), ("events", 1)]
    finally:
        await first.close()
        await second.close()


@asynccontextmanager
async def migrated_events(
    settings: Settings, *, lock_timeout: str | None = None
) -> AsyncIterator[tuple[asyncpg.Connection, asyncpg.Connection]]:
    """The events projection migrated, and two sessions; with `lock_timeout`, the
    database gives it to every session opened after (not to these two)."""
    url = settings.require_database_url()
    conn, other = await asyncpg.connect(url), await asyncpg.connect(url)
    try:
        await migrate(conn, [events])
        if lock_timeout is not None:
            database = await conn.fetchval("SELECT current_database()")
            await conn.execute(f"ALTER DATABASE \"{database}\" SET lock_timeout = '{lock_timeout}'")
        yield conn, other
    finally:
        await other.close()
        await conn.close()


async def test_a_start_waiting_for_a_view_lock_says_who_holds_it_and_holds_nothing(
    settings: Settings,
) -> None:
    """A BI session idle in a transaction that read a projection's view: the start's
    CREATE OR REPLACE VIEW cannot have the view. It does not wait holding its locks (every
    other start would queue behind it): it rolls back, names the session, tries again,
    and goes through once that session ends."""
    async with migrated_events(settings) as (conn, bi):
        reading = bi.transaction()
        await reading.start()
        await bi.fetch("SELECT * FROM projections.event_types LIMIT 1")
        bi_pid = await bi.fetchval("SELECT pg_backend_pid()")
        with structlog.testing.capture_logs() as logged:
            starting = asyncio.create_task(migrate(conn, [events], lock_wait=0.3))
            await eventually(
                lambda: asyncio.sleep(0, [e for e in logged if "waits for a lock" in e["event"]]),
                what="the start saying it waits",
            )
            assert not starting.done()
            # Meanwhile another start is not queued behind it for the whole wait.
            other = await asyncpg.connect(settings.require_database_url())
            try:
                await asyncio.wait_for(ensure_runtime(other), timeout=5)
            finally:
                await other.close()
            await reading.rollback()
            assert await asyncio.wait_for(starting, timeout=30) == []
        waits = [e for e in logged if "waits for a lock" in e["event"]]
        assert any(f"pid {bi_pid} " in session for e in waits for session in e["sessions"])


async def test_the_last_try_waits_even_where_the_database_sets_a_lock_timeout(
    settings: Settings,
) -> None:
    """A database whose sessions have a lock_timeout of their own: the last try still
    waits for the view (rather than failing the start)."""
    async with migrated_events(settings, lock_timeout="100ms") as (conn, bi):
        starter = await asyncpg.connect(settings.require_database_url())
        reading = bi.transaction()
        await reading.start()
        await bi.fetch("SELECT * FROM projections.event_types LIMIT 1")
        starter_pid = await starter.fetchval("SELECT pg_backend_pid()")

        async def tries_and_wait() -> tuple[int, str | None]:
            tries = sum(1 for e in logged if "waits for a lock" in e["event"])
            waits = await conn.fetchval(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", starter_pid
            )
            return tries, waits

        try:
            with structlog.testing.capture_logs() as logged:
                starting = asyncio.create_task(migrate(starter, [events], lock_wait=0.1))
                # Two bounded tries said they wait, and the last one waits for the lock ...
                await eventually(
                    tries_and_wait, lambda got: got == (2, "Lock"), what="the last try waiting"
                )
                # ... past the database's own lock_timeout, several times over.
                await asyncio.sleep(0.5)
                assert not starting.done()
                assert await tries_and_wait() == (2, "Lock")
            await reading.rollback()
            assert await asyncio.wait_for(starting, timeout=30) == []
        finally:
            await starter.close()


async def test_a_start_waiting_for_another_process_migrations_says_so_and_outwaits_a_lock_timeout(
    settings: Settings,
) -> None:
    """Two processes starting together: the second waits for the first's migrations, which
    can wait long themselves (for a reader, the last try without a bound). It said nothing
    meanwhile, and where the database sets a lock_timeout, its wait for the first one
    failed every try and ended the start with an AssertionError."""
    async with migrated_events(settings, lock_timeout="100ms") as (_, first):
        second = await asyncpg.connect(settings.require_database_url())
        migrating = first.transaction()
        await migrating.start()
        await first.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK_KEY)
        first_pid = await first.fetchval("SELECT pg_backend_pid()")
        try:
            with structlog.testing.capture_logs() as logged:

                async def said_so() -> list[Any]:
                    return [e for e in logged if "another process" in e["event"]]

                starting = asyncio.create_task(migrate(second, [events], lock_wait=0.1))
                await eventually(said_so, what="the second start saying it waits")
                await asyncio.sleep(0.5)  # the database's lock_timeout, five times over
                assert not starting.done()
            [said] = [e for e in logged if "another process" in e["event"]]
            assert said["sessions"][0].startswith(f"pid {first_pid} ")
            await migrating.rollback()
            assert await asyncio.wait_for(starting, timeout=30) == []
        finally:
            await second.close()


async def test_a_migration_edited_after_it_was_applied_is_refused_by_name(
    settings: Settings,
) -> None:
    """The database has a migration's old text applied (recorded with its checksum); the
    file now says something else, which this database will never get: refused at start,
    naming the file. A row recorded before checksums were kept takes the file's."""
    url = settings.require_database_url()
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn, [events])
        await conn.execute("UPDATE lattice.migrations SET sha256 = NULL WHERE projector = 'events'")
        assert await migrate(conn, [events]) == []
        recorded = await conn.fetchval(
            "SELECT sha256 FROM lattice.migrations WHERE projector = 'events' AND version = 1"
        )
        assert recorded == checksum((events.sql_dir / "0001_events.sql").read_text())
        # What an edit of the file looks like from the database: another checksum.
        await conn.execute(
            "UPDATE lattice.migrations SET sha256 = repeat('0', 64) WHERE projector = 'events'"
        )
        with pytest.raises(MigrationError) as refused:
            await migrate(conn, [events])
        assert "0001_events.sql was changed after it was applied to this database" in str(
            refused.value
        )
    finally:
        await conn.close()


async def test_migrations_race_safely_where_transactions_default_to_repeatable_read(
    settings: Settings,
) -> None:
    """A database (or role) whose transactions default to REPEATABLE READ: the snapshot
    would be taken before the advisory lock is granted, and the second process would
    run again what the first recorded meanwhile ("already exists")."""
    url = settings.require_database_url()
    admin = await asyncpg.connect(url)
    database = await admin.fetchval("SELECT current_database()")
    await admin.execute(
        f"ALTER DATABASE \"{database}\" SET default_transaction_isolation = 'repeatable read'"
    )
    await admin.close()
    projections = [events, AuditProjection()]
    first, second = await asyncpg.connect(url), await asyncpg.connect(url)
    try:
        assert await first.fetchval("SHOW default_transaction_isolation") == "repeatable read"
        applied = await asyncio.gather(migrate(first, projections), migrate(second, projections))
        assert sorted(applied[0] + applied[1]) == ["audit/0001_audit", "events/0001_events"]
    finally:
        await first.close()
        await second.close()


async def test_a_start_does_not_wait_for_a_session_idle_in_a_transaction_on_positions(
    settings: Settings,
) -> None:
    """Each start re-runs the runtime SQL. A BI tool left a transaction open after reading
    `lattice.offsets`: an ALTER TABLE (even one with nothing to add) would wait for it,
    and every projector's commit behind the ALTER."""
    url = settings.require_database_url()
    idle = await asyncpg.connect(url)
    starting = await asyncpg.connect(url)
    try:
        await ensure_runtime(starting)
        reading = idle.transaction()
        await reading.start()
        await idle.fetch("SELECT * FROM lattice.offsets LIMIT 1")
        await asyncio.wait_for(ensure_runtime(starting), timeout=10)
        await reading.rollback()
    finally:
        await idle.close()
        await starting.close()


def preparer(projection: AuditProjection, hydrate: Hydrate) -> BatchApplier:
    """An applier that only prepares (no pool: `prepare` never touches the database),
    with `hydrate` and a hold of 0.5 s."""
    no_pool = cast("asyncpg.Pool", None)
    return BatchApplier(
        projection,
        no_pool,
        NoDeadLetters(),
        schema="projections",
        projector_key="audit",
        hydrate=hydrate,
        hold=0.5,
    )


def as_hydrated(record: Record) -> Record:
    """`record` with the `data` Stripe's API gives its thin event (the audit projection
    needs none in particular)."""
    full = {**record.json(), "data": {"reason": {"error_count": 1}}}
    return replace(record, value=orjson.dumps(full))


async def test_thin_events_are_hydrated_and_an_unavailable_hydrator_is_waited_for(
    settings: Settings, stack: Stack, topics: Topics, unique: str
) -> None:
    stream_ = stream(120, seed=13, thin_every=10)
    thin = [e for e in stream_ if e.event["object"] == "v2.core.event"]
    await produce(stack.kafka_bootstrap, settings.topic, records(stream_))
    calls: list[int] = []

    async def hydrate(record: Record) -> Record:
        calls.append(record.offset)
        if len(calls) <= 2:
            raise HydrationUnavailable("Stripe answered 503")
        return as_hydrated(record)

    ours = settings.model_copy(update={"group_prefix": unique})
    async with running(ours, [AuditProjection(hydrate_thin_events=True)], hydrate=hydrate):
        await _caught_up(settings, "audit")

    conn = await asyncpg.connect(settings.require_database_url())
    try:
        counts = await applied_counts(conn)
    finally:
        await conn.close()
    assert len(counts) == len(stream_), "a record was skipped instead of waited for"
    assert len(calls) == len(thin) + 2  # only thin events, and the two refusals retried
    assert await read_all(stack.kafka_bootstrap, topics.dlq) == []


async def test_a_hydrator_away_for_long_costs_the_consumer_neither_its_partitions_nor_a_flood(
    settings: Settings,
    stack: Stack,
    topics: Topics,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A group consumer that does not fetch for `max_poll_interval_ms` leaves its group:
    waiting out a Stripe outage inside one batch would hand the partitions round the
    group's processes, all waiting for the same Stripe. The runner gives the batch up well
    before (writing what it reduced) and fetches the rest again, which still waits out the delay
    the hydrator was given instead of asking Stripe again at once."""
    # A hold of 3 s, a third of the 9 s Stripe stays away. With half of it, a loaded machine
    # (three test workers on two cores) made the consumer miss its poll interval now and
    # then, and lose its partitions.
    monkeypatch.setattr(intake, "MAX_POLL_INTERVAL_MS", 6000)
    revoked = _count_revocations(monkeypatch)
    stream_ = stream(60, seed=13, thin_every=10)
    await produce(stack.kafka_bootstrap, settings.topic, records(stream_))
    loop = asyncio.get_running_loop()
    back_at: float | None = None  # Stripe is away for 9 s from the first call, not the start
    refused: list[float] = []

    async def hydrate(record: Record) -> Record:
        nonlocal back_at
        if back_at is None:
            back_at = loop.time() + 9.0
        if loop.time() < back_at:
            refused.append(loop.time())
            raise HydrationUnavailable("Stripe answered 503")
        return as_hydrated(record)

    ours = settings.model_copy(update={"group_prefix": unique})
    async with running(ours, [AuditProjection(hydrate_thin_events=True)], hydrate=hydrate):
        await _caught_up(settings, "audit")
        assert revoked == [], "the consumer left its group while Stripe was away"

    await assert_each_applied_once(settings.require_database_url(), len(stream_))
    # Tries 0.5, 1, 2 and 4 s apart across the batches fetched again (5 in 9 s), not
    # one more at each fetch.
    assert 3 <= len(refused) <= 5, [round(t - refused[0], 2) for t in refused]


async def test_a_database_away_for_long_costs_the_consumer_not_its_partitions(
    settings: Settings,
    stack: Stack,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While it cannot read its stored positions the runner waits, and a consumer that
    does not poll for `max_poll_interval_ms` leaves its group: with the database away for
    minutes every process would, and all rejoin at once when it is back. The runner polls
    between its waits (dropping what it gets: it re-seeks before it takes anything)."""
    # 6 s, as the other tests of a consumer kept in its group: 3 s left too little room for
    # a loaded machine (three test workers on two cores) between two polls.
    monkeypatch.setattr(intake, "MAX_POLL_INTERVAL_MS", 6000)
    monkeypatch.setattr(runner_module, "MAX_BACKOFF_S", 1.0)  # waits well under it
    revoked = _count_revocations(monkeypatch)
    stream_ = stream(60, seed=17)
    await produce(stack.kafka_bootstrap, settings.topic, records(stream_))
    loop = asyncio.get_running_loop()
    back_at = loop.time() + 12.0  # twice the poll interval
    load = offsets.load
    refused: list[float] = []

    async def away(*args: Any, **kwargs: Any) -> Any:
        if loop.time() < back_at:
            refused.append(loop.time())
            raise ConnectionRefusedError(111, "Connect call failed")
        return await load(*args, **kwargs)

    monkeypatch.setattr(offsets, "load", away)
    ours = settings.model_copy(update={"group_prefix": unique})
    async with running(ours, [AuditProjection()]):
        await _caught_up(settings, "audit")
        assert revoked == [], "the consumer left its group while the database was away"
    assert refused, "the database was never found away"
    await assert_each_applied_once(settings.require_database_url(), len(stream_))


async def test_a_batch_slow_to_hydrate_is_cut_at_the_hold_and_each_record_asked_once(
    settings: Settings,
) -> None:
    """Answers that each come in time can add up past the hold (many pages of lines at a
    month's end): `prepare` ends the batch before the next call once the hold is over,
    with what it reduced so far (written, the rest fetched again). Dropping it whole to
    fetch it again asked Stripe again for answers not cached (a 404's), for ever when
    those alone took longer than the hold."""
    thin = [e for e in stream(200, seed=13, thin_every=10) if e.event["object"] == "v2.core.event"]
    tp = TopicPartition(settings.topic, 0)
    records = [Record(settings.topic, 0, n, b"k", e.body, {}, 0) for n, e in enumerate(thin[:6])]
    asked: list[int] = []

    async def hydrate(record: Record) -> Record:
        asked.append(record.offset)
        await asyncio.sleep(0.3)  # Stripe's answer, never kept
        if record.offset % 2:
            raise PoisonRecord("Stripe answered 404: no such event")
        return as_hydrated(record)

    applier = preparer(AuditProjection(hydrate_thin_events=True), hydrate)
    parts = []
    rest = records
    while rest:  # what the runner does: write what was prepared, fetch the rest again
        prepared = await applier.prepare({tp: rest})
        taken = prepared.batch[tp]
        assert taken == rest[: len(taken)], "not the head of the batch"
        assert prepared.cut == (len(taken) < len(rest))
        parts.append(prepared)
        rest = rest[len(taken) :]
    # Cut at least once (six answers take 1.8 s), never before its first record (two
    # answers fit in a hold of 0.5 s, fewer on a slow machine, never none).
    assert len(parts) >= 2
    assert asked == [r.offset for r in records], "a record was asked for twice"
    assert [r.offset for p in parts for r, _ in p.reduced] == [0, 2, 4]
    assert [d.record.offset for p in parts for d in p.dead] == [1, 3, 5]


async def test_a_hold_over_while_stripe_is_away_cuts_after_what_was_reduced(
    settings: Settings,
) -> None:
    """Records reduced before the hydrator went away are written (dropped with the batch,
    their answers were asked for again on every fetch); and a record whose hydration came
    in time but whose reduce must be tried again is not cut between its tries (its first
    answer, never kept, was asked for again on every fetch, for ever where it alone took
    longer than the hold)."""
    thin = [e for e in stream(200, seed=13, thin_every=10) if e.event["object"] == "v2.core.event"]
    tp = TopicPartition(settings.topic, 0)
    records = [Record(settings.topic, 0, n, b"k", e.body, {}, 0) for n, e in enumerate(thin[:3])]
    failed_once: list[int] = []

    class FailingOnce(AuditProjection):
        def reduce(self, record: Record) -> Any:
            if record.offset not in failed_once:
                failed_once.append(record.offset)
                raise ValueError("a reducer's bad day")
            return super().reduce(record)

    asked: list[int] = []

    async def away_after_one(record: Record) -> Record:
        asked.append(record.offset)
        if record.offset > 0:
            raise HydrationUnavailable("Stripe answered 503")
        await asyncio.sleep(0.6)  # in time, but past the hold
        return as_hydrated(record)

    applier = preparer(FailingOnce(hydrate_thin_events=True), away_after_one)
    prepared = await applier.prepare({tp: records})
    assert prepared.cut
    assert prepared.batch == {tp: records[:1]}
    assert [r.offset for r, _ in prepared.reduced] == [0]
    assert asked[:2] == [0, 0]  # tried again after the hold was over, not cut


async def test_a_cut_batch_is_written_and_the_rest_fetched_again_once(
    settings: Settings,
    stack: Stack,
    topics: Topics,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The runner writes the head of a batch cut at the hold and fetches the rest again
    from the positions it stored: every record applied once, every thin one asked for
    once, and the consumer stays in its group."""
    # A hold of 3 s, for 12 s of hydrating all twenty thin events. With both halved, a
    # loaded machine (three test workers on two cores) made the consumer miss its poll
    # interval now and then, and lose its partitions.
    monkeypatch.setattr(intake, "MAX_POLL_INTERVAL_MS", 6000)
    revoked = _count_revocations(monkeypatch)
    # Every other event thin: each partition's share takes a few seconds to hydrate.
    stream_ = stream(40, seed=13, thin_every=2)
    await produce(stack.kafka_bootstrap, settings.topic, records(stream_))
    asked: list[str] = []

    async def hydrate(record: Record) -> Record:
        asked.append(record.json()["id"])
        await asyncio.sleep(0.6)  # Stripe's answer, not cached
        return as_hydrated(record)

    ours = settings.model_copy(update={"group_prefix": unique})
    with structlog.testing.capture_logs() as captured:
        async with running(ours, [AuditProjection(hydrate_thin_events=True)], hydrate=hydrate):
            await _caught_up(settings, "audit")
    assert revoked == []
    thin = [e.event["id"] for e in stream_ if e.event["object"] == "v2.core.event"]
    assert sorted(asked) == sorted(thin), "a thin record was asked for twice"
    assert any(c["event"].startswith("batch cut short at the hold") for c in captured)
    await assert_each_applied_once(settings.require_database_url(), len(stream_))
    assert await read_all(stack.kafka_bootstrap, topics.dlq) == []


def _count_revocations(monkeypatch: pytest.MonkeyPatch) -> list[set[TopicPartition]]:
    """The non-empty revocations the runners' rebalance listeners are told of, from now."""
    revoked: list[set[TopicPartition]] = []
    revoke = SeekToStored.on_partitions_revoked

    async def counted(listener: SeekToStored, partitions: Sequence[TopicPartition]) -> None:
        if partitions:
            revoked.append(set(partitions))
        await revoke(listener, partitions)

    monkeypatch.setattr(SeekToStored, "on_partitions_revoked", counted)
    return revoked


async def test_a_stop_while_the_migrations_wait_for_a_reader_ends_the_start(
    settings: Settings,
) -> None:
    """A session left in a transaction that read a view (a BI tool) holds the lock its
    re-creation needs, and a start's migrations wait for it (the last try for as long as
    it takes): SIGTERM must still stop the process, without waiting for the reader."""
    url = settings.require_database_url()
    reader = await asyncpg.connect(url)
    try:
        await migrate(reader, [subscriptions])
        reading = reader.transaction()
        await reading.start()
        await reader.fetch("SELECT * FROM projections.mrr")
        stop = asyncio.Event()
        with structlog.testing.capture_logs() as captured:
            task = asyncio.create_task(
                run_projections(settings, [subscriptions], stop=stop, handle_signals=False)
            )
            await eventually(
                lambda: asyncio.sleep(0, [c["event"] for c in captured]),
                lambda said: "migration waits for a lock another session holds" in said,
                timeout=30,
                what="the start waiting for the reader's lock",
            )
            stop.set()
            await asyncio.wait_for(task, timeout=5)  # the reader still holds its lock
        assert "projectors stopped before they started" in [c["event"] for c in captured]
        await reading.rollback()
    finally:
        await reader.close()


async def test_a_zombie_batch_from_stale_positions_rolls_back_whole(
    settings: Settings, stack: Stack
) -> None:
    url = settings.require_database_url()
    audit = AuditProjection()
    conn = await asyncpg.connect(url)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        await migrate(conn, [audit])
        tp = TopicPartition(settings.topic, 0)
        batch = {tp: [Record(settings.topic, 0, n, b"k", b"{}", {}, 0) for n in range(5)]}
        sink = NoDeadLetters()
        owner = BatchApplier(audit, pool, sink, schema="projections", projector_key="audit")
        zombie = BatchApplier(audit, pool, sink, schema="projections", projector_key="audit")
        await owner.commit(batch, {tp: None})
        # The zombie still believes nothing was stored: its whole batch must roll back.
        with pytest.raises(PositionConflict):
            await zombie.commit(batch, {tp: None})
        with pytest.raises(PositionConflict):
            await zombie.commit(batch, {tp: 3})
        assert set((await applied_counts(conn)).values()) == {1}
        assert await positions(url, "audit") == {0: 5}
    finally:
        await pool.close()
        await conn.close()


async def test_records_fetched_while_the_stored_positions_load_are_not_taken(
    settings: Settings, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiokafka hands out records of a new assignment at once, from its own position (the
    log start: the group never commits), while the rebalance listener still reads the
    stored positions. A fetch that got such records before the seek and is taken after it
    must be dropped: taken from the stored position on, its records would start past it
    (the records between skipped) or repeat it (applied twice). The test holds such a
    fetch until the listener has sought, so the interleaving happens every time."""
    url = settings.require_database_url()
    settings = settings.model_copy(update={"projector_batch_size": 50})
    stream_ = stream(900)
    await produce(stack.kafka_bootstrap, settings.topic, records(stream_[:90]))
    async with running(settings, [AuditProjection()]):
        await _caught_up(settings, "audit")
    stored = await positions(url, "audit")
    await produce(stack.kafka_bootstrap, settings.topic, records(stream_[90:]))

    loading, held, sought = asyncio.Event(), asyncio.Event(), asyncio.Event()
    real_load, real_getmany, real_seek = (
        offsets.load,
        AIOKafkaConsumer.getmany,
        AIOKafkaConsumer.seek,
    )

    async def load(conn: Any, projector: str, partitions: Any) -> Any:
        if not held.is_set():
            loading.set()
            await asyncio.wait_for(held.wait(), timeout=30)
        return await real_load(conn, projector, partitions)

    async def getmany(self: AIOKafkaConsumer, *tps: Any, **kw: Any) -> Any:
        got = await real_getmany(self, *tps, **kw)
        past = any(msgs[0].offset > stored[tp.partition] for tp, msgs in got.items())
        if loading.is_set() and not held.is_set() and past:
            held.set()  # records from past the stored position, fetched before the seek
            await asyncio.wait_for(sought.wait(), timeout=30)
        return got

    def seek(self: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> None:
        real_seek(self, tp, offset)
        if held.is_set():
            sought.set()

    monkeypatch.setattr(offsets, "load", load)
    monkeypatch.setattr(AIOKafkaConsumer, "getmany", getmany)
    monkeypatch.setattr(AIOKafkaConsumer, "seek", seek)
    async with running(settings, [AuditProjection()]):
        await _caught_up(settings, "audit")
    assert held.is_set(), "no fetch came while the stored positions were read"
    assert sought.is_set(), "the listener did not seek"

    await assert_each_applied_once(url, len(stream_))


@asynccontextmanager
async def stored_at_three(
    settings: Settings, stack: Stack
) -> AsyncIterator[tuple[ProjectionRunner, AIOKafkaConsumer, BatchApplier]]:
    """A runner of the audit projection with a started consumer (nothing assigned), not
    running; partition 0 holds offsets 0..9 (a stored position past the log's end is
    refused) and its stored position is 3."""
    url = settings.require_database_url()
    audit = AuditProjection()
    conn = await asyncpg.connect(url)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
        await producer.start()
        try:
            for _ in range(10):
                await producer.send_and_wait(settings.topic, b"{}", partition=0)
        finally:
            await producer.stop()
        await migrate(conn, [audit])
        applier = BatchApplier(
            audit, pool, NoDeadLetters(), schema="projections", projector_key="audit"
        )
        tp0 = TopicPartition(settings.topic, 0)
        await applier.commit(
            {tp0: [Record(settings.topic, 0, n, b"k", b"{}", {}, 0) for n in range(3)]}, {tp0: None}
        )
        runner = ProjectionRunner(audit, settings, pool, NoDeadLetters())
        runner.consumer = consumer
        yield runner, consumer, applier
    finally:
        await consumer.stop()
        await pool.close()
        await conn.close()


async def test_a_seek_overtaken_by_a_rebalance_leaves_the_positions_to_the_later_one(
    settings: Settings, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two seeks can overlap (the main loop's after a conflict, the rebalance listener's):
    the one that read the stored positions first must not seek after the later one, nor
    seek a partition that was unassigned meanwhile (aiokafka raises: it crashed the
    process)."""
    tp0, tp1 = (TopicPartition(settings.topic, n) for n in (0, 1))
    async with stored_at_three(settings, stack) as (runner, consumer, applier):
        consumer.assign([tp0])

        # Unassigned meanwhile: nothing sought, nothing held, no exception.
        await runner.seek_to_stored([tp0, tp1])
        assert runner.positions == {}

        # The first seek reads 3, then waits; the stored position moves to 5 and a second
        # seek takes it; the first must then stop, not seek back to 3.
        read, go = asyncio.Event(), asyncio.Event()
        real_load = offsets.load

        async def slow_load(conn: Any, projector: str, partitions: Any) -> Any:
            found = await real_load(conn, projector, partitions)
            if not read.is_set():
                read.set()
                await go.wait()
            return found

        monkeypatch.setattr(offsets, "load", slow_load)
        first = asyncio.create_task(runner.seek_to_stored([tp0]))
        await read.wait()
        await applier.commit(
            {tp0: [Record(settings.topic, 0, n, b"k", b"{}", {}, 0) for n in (3, 4)]}, {tp0: 3}
        )
        await runner.seek_to_stored([tp0])
        go.set()
        await first
        assert runner.positions == {tp0: 5}
        assert await consumer.position(tp0) == 5

        # aiokafka changes the assignment, then awaits, then calls the listener: a seek can
        # end in between (here: while it seeks a partition with no stored position to the
        # beginning) with a partition that is no longer assigned; it must not resume it.
        tp2 = TopicPartition(settings.topic, 2)
        consumer.assign([tp0, tp2])
        real_to_beginning = AIOKafkaConsumer.seek_to_beginning

        async def rebalanced_meanwhile(self: AIOKafkaConsumer, *tps: TopicPartition) -> bool:
            self.assign([tp2])
            done: bool = await real_to_beginning(self, *tps)
            return done

        monkeypatch.setattr(AIOKafkaConsumer, "seek_to_beginning", rebalanced_meanwhile)
        await runner.seek_to_stored([tp0, tp2])
        assert runner.positions == {}


async def test_a_record_polled_during_a_pause_supersedes_a_seek_under_way(
    settings: Settings, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner polls while it waits out a database away (and drops what it gets), and a
    rebalance's seek can run meanwhile: a record polled from a partition already seeked
    moved it one past its stored position, and the seek, ending after, let the runner go on
    from there: that record was never applied."""
    tp0, tp2 = (TopicPartition(settings.topic, n) for n in (0, 2))
    async with stored_at_three(settings, stack) as (runner, consumer, _):
        consumer.assign([tp0, tp2])
        runner._needs_seek = True  # the database was found away: the main loop pauses
        runner.stop.set()  # its wait ends at once (the poll before it is what counts)
        real_to_beginning = AIOKafkaConsumer.seek_to_beginning
        polled = []

        # Partition 0 (stored position 3) is seeked; partition 2 (none stored) is being
        # seeked to its beginning when the main loop's pause polls.
        async def pause_meanwhile(self: AIOKafkaConsumer, *tps: TopicPartition) -> bool:
            polled.append(await consumer.position(tp0))
            for _ in range(100):  # until the fetcher has a record to give
                await runner._pause()
                if await consumer.position(tp0) != polled[0]:
                    break
                await asyncio.sleep(0.05)
            polled.append(await consumer.position(tp0))
            done: bool = await real_to_beginning(self, *tps)
            return done

        monkeypatch.setattr(AIOKafkaConsumer, "seek_to_beginning", pause_meanwhile)
        await runner.seek_to_stored([tp0, tp2])
        assert polled == [3, 4], "the pause polled nothing: the case is not made"
        if not runner._needs_seek:  # the seek counts as done: the runner takes from here
            assert runner.positions[tp0] == await consumer.position(tp0), "a record skipped"
        monkeypatch.undo()
        assert await runner._reseek()
        assert (runner.positions[tp0], await consumer.position(tp0)) == (3, 3)


async def test_a_partition_taken_by_another_process_is_given_no_lag_any_more(
    settings: Settings,
) -> None:
    """A rebalance moved partition 1 to another process: the lag this one last said of it
    would stay (and be summed with the new owner's); partition 0, kept, keeps its own."""
    tp0, tp1 = TopicPartition(settings.topic, 0), TopicPartition(settings.topic, 1)
    pool = await asyncpg.create_pool(settings.require_database_url(), min_size=1, max_size=2)
    try:
        metrics = RuntimeMetrics()
        runner = ProjectionRunner(
            AuditProjection(), settings, pool, NoDeadLetters(), metrics=metrics
        )
        metrics.committed(runner.name, 10, 0, 0.1, {tp0: (50, 40), tp1: (3_040, 40)})
        # No consumer to seek with here: the listener hands that failure to the runner.
        await SeekToStored(runner).on_partitions_assigned([tp0])

        def lag(tp: TopicPartition) -> float | None:
            return metrics.registry.get_sample_value(
                "lattice_projector_lag",
                {"projector": runner.name, "topic": tp.topic, "partition": str(tp.partition)},
            )

        assert (lag(tp0), lag(tp1)) == (10.0, None)
    finally:
        await pool.close()


async def test_a_failed_drain_in_the_rebalance_listener_lets_nothing_be_written_after_it(
    settings: Settings,
) -> None:
    """aiokafka only logs what a listener raises. A batch failing while the listener waits
    on it left the revoked partitions' positions held: the next batch, written from
    before the failed one, moved the stored position past records never applied."""
    url = settings.require_database_url()
    audit = AuditProjection()
    tp = TopicPartition(settings.topic, 0)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        runner = ProjectionRunner(audit, settings, pool, NoDeadLetters())
        runner.positions[tp] = runner.fetched[tp] = 40

        async def failing_write() -> Any:
            raise RuntimeError("the dead-letter topic refused a letter for good")

        write = asyncio.create_task(failing_write())
        runner._inflight = (write, Any, 0.0)  # type: ignore[assignment]
        epoch = runner.epoch
        await SeekToStored(runner).on_partitions_revoked([tp])  # raises nothing, as aiokafka

        assert tp not in runner.positions
        assert runner.epoch > epoch  # a batch fetched before is dropped, not written
        assert runner._needs_seek
        assert isinstance(runner._failed, RuntimeError)  # the main loop raises it
    finally:
        await pool.close()


@pytest.fixture
async def audit_runner(
    settings: Settings, stack: Stack
) -> AsyncIterator[tuple[ProjectionRunner, asyncpg.Connection]]:
    """A runner of the audit projection over 20 records, not started, and a connection."""
    await produce(stack.kafka_bootstrap, settings.topic, records(stream(20)))
    url = settings.require_database_url()
    audit = AuditProjection()
    conn = await asyncpg.connect(url)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=3)
    try:
        await migrate(conn, [audit])
        yield ProjectionRunner(audit, settings, pool, NoDeadLetters()), conn
    finally:
        await pool.close()
        await conn.close()


async def test_a_seek_the_listener_could_not_make_stops_the_runner_loudly(
    audit_runner: tuple[ProjectionRunner, asyncpg.Connection], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stored-position read failing for a reason no wait mends (a changed password, met
    by a pool reconnecting) used to vanish inside aiokafka: the runner then ran on, taking
    nothing from its partitions, for ever and without a word."""
    runner, conn = audit_runner

    async def refused(conn: Any, projector: str, partitions: Any) -> Any:
        raise asyncpg.InvalidPasswordError('password authentication failed for user "x"')

    monkeypatch.setattr(offsets, "load", refused)
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncio.wait_for(runner.run(), timeout=60)
    assert await applied_counts(conn) == {}


async def test_a_stored_position_past_the_log_end_stops_the_runner_with_what_to_do(
    settings: Settings, audit_runner: tuple[ProjectionRunner, asyncpg.Connection]
) -> None:
    """The topic created again (or the broker's data lost) while PostgreSQL kept its
    positions: aiokafka would start over from the log's start, and every new record below
    the stored position would be skipped without a word."""
    runner, conn = audit_runner
    tp = TopicPartition(settings.topic, 0)
    async with conn.transaction():
        await offsets.compare_and_set(conn, "audit", {tp: offsets.Advance(None, 500, None)})
    with pytest.raises(ConfigError, match=rf"position 500 of {settings.topic}:0 is past"):
        await asyncio.wait_for(runner.run(), timeout=60)
    assert await applied_counts(conn) == {}


async def test_records_deleted_from_the_log_before_they_were_applied_are_said(
    settings: Settings, stack: Stack, audit_runner: tuple[ProjectionRunner, asyncpg.Connection]
) -> None:
    """A retention someone set on the topic (or `kafka-delete-records`) deleted records
    the projector had not applied yet: it goes on from the log's start, as aiokafka does,
    and a warning says which records its tables lack; nothing is applied twice."""
    _, conn = audit_runner  # its projection's tables, run here by `lattice project`'s code
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
    await producer.start()
    try:
        for r in records(stream(6, seed=11)):  # on partition 0, whatever their keys
            await producer.send_and_wait(
                settings.topic, r.value, key=r.key, headers=r.headers, partition=0
            )
    finally:
        await producer.stop()
    tp = TopicPartition(settings.topic, 0)
    async with conn.transaction():
        await offsets.compare_and_set(conn, "audit", {tp: offsets.Advance(None, 1, None)})
    await delete_records_before(stack.kafka_bootstrap, tp, 4)
    with structlog.testing.capture_logs() as logged:
        async with running(settings, [AuditProjection()]):
            await _caught_up(settings, "audit")
    # Said at each seek until a batch moves the position past the log's start: once here.
    said, *again = [e for e in logged if e["event"].startswith("offsets deleted from the log")]
    assert all(e == said for e in again)
    assert (said["topic"], said["partition"]) == (settings.topic, 0)
    assert (said["stored_position"], said["log_start"], said["offsets_deleted"]) == (1, 4, 3)
    assert said["log_level"] == "warning"
    counts = await applied_counts(conn)
    end = (await log_ends(stack.kafka_bootstrap, settings.topic))[0]
    assert sorted(o for (_, p, o) in counts if p == 0) == list(range(4, end))
    assert set(counts.values()) == {1}


async def test_a_partition_whose_records_were_all_deleted_is_said_once_per_process(
    settings: Settings, stack: Stack
) -> None:
    """No batch ever moves a stored position past the start of a partition with nothing
    left on it, so the warning, said at each seek until one does, came at every
    rebalance. A runner keeps what it said: once per process (again after a restart)."""
    tp = TopicPartition(settings.topic, 0)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
    await producer.start()
    try:
        for r in records(stream(3, seed=5)):
            await producer.send_and_wait(settings.topic, r.value, key=r.key, partition=0)
    finally:
        await producer.stop()
    end = (await log_ends(stack.kafka_bootstrap, settings.topic))[0]
    assert end == 3
    await delete_records_before(stack.kafka_bootstrap, tp, end)
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        said: set[tuple[TopicPartition, int, int]] = set()
        with structlog.testing.capture_logs() as logged:
            for _seek in range(3):  # a start, then two rebalances
                await check_stored_positions(consumer, "audit", {tp: 1}, said)
    finally:
        await consumer.stop()
    warned = [e for e in logged if e["event"].startswith("offsets deleted from the log")]
    assert [(e["stored_position"], e["log_start"]) for e in warned] == [(1, end)]


class KeptDeadLetters:
    """A dead-letter sink that keeps what it is given."""

    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    async def send(self, letters: Sequence[DeadLetter]) -> int:
        self.letters += letters
        return len(letters)


async def test_a_record_of_the_log_without_the_receivers_headers_is_checked_as_a_body(
    settings: Settings,
) -> None:
    """A record put on the log by someone else's producer (no `stripe-event-id` header):
    what the receiver would have refused (here an event without `"object": "event"`) is a
    dead letter, in every projection alike, rather than rows in some tables and not in
    others. The same body with the receiver's headers, and a real event without them,
    are applied as ever."""
    url = settings.require_database_url()
    conn = await asyncpg.connect(url)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        await migrate(conn, [events])
        sink = KeptDeadLetters()
        applier = BatchApplier(
            events,
            pool,
            sink,
            schema="projections",
            projector_key="events",
            event_log=settings.topic,
        )
        real, headless, received = (subscription_event(n) for n in range(3))
        headless.pop("object")
        received.pop("object")
        tp = TopicPartition(settings.topic, 0)
        batch = [
            Record(settings.topic, 0, 0, b"k", orjson.dumps(real), {}, 0),
            Record(settings.topic, 0, 1, b"k", orjson.dumps(headless), {}, 0),
            Record(
                settings.topic,
                0,
                2,
                b"k",
                orjson.dumps(received),
                {"stripe-event-id": received["id"].encode()},
                0,
            ),
        ]
        outcome = await applier.commit({tp: batch}, {tp: None})
    finally:
        await pool.close()
    try:
        indexed = {r["id"] for r in await conn.fetch("SELECT id FROM projections.events")}
    finally:
        await conn.close()
    assert indexed == {real["id"], received["id"]}
    assert [(letter.record.offset, letter.error) for letter in sink.letters] == [
        (
            1,
            "reduce failed after 1 attempt: PoisonRecord: not a Stripe event: "
            "`object` is neither `event` nor `v2.core.event`",
        )
    ]
    assert outcome.dead == 1
