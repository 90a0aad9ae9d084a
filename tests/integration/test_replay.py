"""`lattice replay`: rebuild into a shadow schema, swap in one transaction, readers never
see an empty or partial table, the live runner carries on from the rebuilt positions."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg
import orjson
import pytest
import structlog.testing
from aiokafka import AIOKafkaProducer, TopicPartition

from deploy.settings import Settings
from deploy.stack.process import run_coroutine
from deploy.stack.topics import delete_topics, ensure_topics
from ingest.batching import partition_for
from ingest.record import build_record
from projectors import dependents, offsets, shadow
from projectors.base import HydrationUnavailable, Record
from projectors.batch import BatchApplier
from projectors.events import projection as events
from projectors.meters import projection as meters
from projectors.migrate import ensure_runtime, migrate
from projectors.progress import Progress
from projectors.replay import ReplayResult, replay
from projectors.replay_lock import REPLAY_LOCK
from projectors.replay_start import ReplayError, StartAt
from projectors.replay_swap import swap_committed
from projectors.service import dead_letter_producer
from tests.conftest import Stack, Topics
from tests.support.kafka import read_all
from tests.support.projectors import (
    EVENTS_TABLE,
    as_user,
    log_ends,
    positions,
    rows,
    running,
)
from tests.support.stripe_stream import produce, records, stream
from tests.support.thin_events import meter_error_report
from tests.support.wait import eventually

pytestmark = pytest.mark.integration


def _ids(items: list[tuple[object, ...]]) -> set[object]:
    return {r[0] for r in items}


async def _caught_up(settings: Settings, name: str = "events") -> None:
    ends = await log_ends(settings.kafka_bootstrap, settings.topic)
    url = settings.require_database_url()
    await eventually(
        lambda: positions(url, name),
        lambda p: p == ends,
        timeout=30,
        what=f"{name} at the log end {ends}",
    )


async def _events_projected(
    settings: Settings, stack: Stack, unique: str, *, seed: int
) -> Settings:
    """60 events on the log and the live `events` projection caught up with them (under
    this test's group prefix); the settings it ran with."""
    ours = settings.model_copy(update={"group_prefix": unique})
    await produce(stack.kafka_bootstrap, settings.topic, records(stream(60, seed=seed)))
    async with running(ours, [events]):
        await _caught_up(ours)
    return ours


async def _last_events(url: str, projector: str) -> dict[int, datetime | None]:
    """`lattice status`'s LAST EVENT per partition: `last_event_at` of each stored position."""
    conn = await asyncpg.connect(url)
    try:
        found = await conn.fetch(
            "SELECT partition, last_event_at FROM lattice.offsets WHERE projector = $1", projector
        )
    finally:
        await conn.close()
    return {r["partition"]: r["last_event_at"] for r in found}


async def test_replay_swaps_under_a_polling_reader_and_the_live_runner_goes_on(
    settings: Settings, stack: Stack, topics: Topics, unique: str
) -> None:
    ours = settings.model_copy(update={"group_prefix": unique, "projector_batch_size": 100})
    url = settings.require_database_url()
    stream_ = records(stream(1500, seed=4))
    # A poison record: dead-lettered once by the live runner, not again by the replay.
    await produce(stack.kafka_bootstrap, settings.topic, [*stream_[:1200], b"not json"])
    seen: list[tuple[int, int]] = []
    done = asyncio.Event()

    async def reader() -> None:
        conn = await asyncpg.connect(url)
        try:
            while not done.is_set():
                # One statement, one snapshot: the table and the view must agree.
                row = await conn.fetchrow(
                    "SELECT (SELECT count(*) FROM projections.events), "
                    "(SELECT sum(events) FROM projections.event_types)"
                )
                assert row is not None
                seen.append((row[0], row[1]))
        finally:
            await conn.close()

    progress: list[Progress] = []
    async with running(ours, [events]):
        await _caught_up(ours)
        before = len(await rows(url, "SELECT id FROM projections.events"))
        polling = asyncio.create_task(reader())
        try:
            async with dead_letter_producer(ours) as dead_letters:
                result = await replay(
                    ours,
                    events,
                    StartAt(from_beginning=True),
                    dead_letters,
                    on_progress=progress.append,
                )
            # The live runner must write into the swapped-in table from the rebuilt positions.
            await produce(stack.kafka_bootstrap, settings.topic, stream_[1200:])
            await _caught_up(ours)
        finally:
            done.set()
            await polling

    assert result.tables == ["events"]
    assert result.records >= 1201
    assert progress, "no progress was reported"
    assert progress[-1].done == progress[-1].total
    assert len(seen) > 10, "the reader barely ran"
    assert min(table for table, _ in seen) >= before
    assert all(view == table for table, view in seen)
    assert _ids(await rows(url, "SELECT id FROM projections.events")) == {
        r.headers[0][1].decode() for r in stream_
    }
    assert await positions(url, "events.replay") == {}
    assert [r.value for r in await read_all(stack.kafka_bootstrap, topics.dlq)] == [b"not json"]
    assert await rows(url, "SELECT 1 FROM pg_namespace WHERE nspname = 'replay_events'") == []


async def test_a_swap_backs_out_while_the_live_runner_is_past_the_rebuild(
    settings: Settings, stack: Stack, unique: str
) -> None:
    """The live runner committed past the rebuild between the rebuild's last read and the
    swap: with the live positions locked, the swap sees it and changes nothing (the
    replay reads on and tries again); only its last round swaps regardless."""
    await _events_projected(settings, stack, unique, seed=20)
    url = settings.require_database_url()
    conn = await asyncpg.connect(url)
    try:
        table = await conn.fetch("SELECT id FROM projections.events ORDER BY id")
        await shadow.build(conn, events, "replay_events")
        # The rebuild one record short of the live runner on each partition it holds.
        await conn.execute(
            "INSERT INTO lattice.offsets (projector, topic, partition, next_offset) "
            "SELECT 'events.replay', topic, partition, next_offset - 1 "
            "FROM lattice.offsets WHERE projector = 'events'"
        )
        with pytest.raises(shadow.ShadowBehind):
            async with conn.transaction():
                await shadow.swap(conn, events, "replay_events", [])
        assert await conn.fetch("SELECT id FROM projections.events ORDER BY id") == table
        assert await conn.fetchval("SELECT to_regnamespace('replay_events')") is not None

        async with conn.transaction():
            await shadow.swap(conn, events, "replay_events", [], behind_ok=True)
        assert await conn.fetch("SELECT id FROM projections.events") == []  # the empty shadow
    finally:
        await conn.execute("DROP SCHEMA IF EXISTS replay_events CASCADE")
        await conn.close()


async def test_the_swap_waits_for_the_rebuild_to_reach_a_live_runner_that_got_ahead(
    settings: Settings, stack: Stack, unique: str
) -> None:
    """Records appended at the end of the rebuild and applied by the live runner before the
    swap: swapped in without them, the tables would lose those rows (an invoice `paid`
    shown `open` again) until the live runner applied them once more. The swap sees the
    live positions ahead, catches up to them, and only then swaps."""
    ours = await _events_projected(settings, stack, unique, seed=12)
    url = settings.require_database_url()
    more = records(stream(40, seed=13))
    ahead: list[dict[int, int]] = []

    async def live_runner_applies_more() -> None:
        await produce(stack.kafka_bootstrap, settings.topic, more)
        async with running(ours, [events]):
            await _caught_up(ours)
        ahead.append(await positions(url, "events"))

    def meanwhile(progress: Progress) -> None:
        # The rebuild has read the whole log as it was: the live runner now gets ahead.
        if not ahead and progress.done == progress.total:
            run_coroutine(live_runner_applies_more)

    async with dead_letter_producer(ours) as dead_letters:
        result = await replay(
            ours, events, StartAt(from_beginning=True), dead_letters, on_progress=meanwhile
        )

    assert ahead, "the live runner never got ahead of the rebuild"
    # At once, with no live runner running to apply anything again.
    assert {r.headers[0][1].decode() for r in more} <= _ids(
        await rows(url, "SELECT id FROM projections.events")
    )
    assert await positions(url, "events") == ahead[0]
    assert result.records == 100


HOLDER = (
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = $1 "
    "AND objid = (hashtext($2)::bigint & 4294967295)::text::oid AND objsubid = 2 AND granted "
    # pg_locks is the whole server's: another test's database may hold the same lock.
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


async def _cut_off_the_replay_lock(url: str, name: str) -> None:
    """Terminate the session holding the replay lock of `name` (as a database restart or
    an idle-session timeout would)."""
    conn = await asyncpg.connect(url)
    try:
        holder = await conn.fetchval(HOLDER, REPLAY_LOCK, name)
        assert holder is not None, "no session holds the replay lock"
        assert await conn.fetchval("SELECT pg_terminate_backend($1, 5000)", holder)
    finally:
        await conn.close()


class OtherReplay:
    """A session of our own, on a thread of its own, holding the replay lock of `name`
    as a second replay started at that moment would, until `release()`."""

    def __init__(self, url: str, name: str) -> None:
        self.taken, self._done = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._hold(url, name),))
        self._thread.start()

    async def _hold(self, url: str, name: str) -> None:
        conn = await asyncpg.connect(url)
        try:
            # Waits for the lock, as `pg_try_advisory_lock` would find it, once it is free.
            await conn.execute("SELECT pg_advisory_lock($1, hashtext($2))", REPLAY_LOCK, name)
            self.taken.set()
            await asyncio.to_thread(self._done.wait)
        finally:
            await conn.close()

    def release(self) -> None:
        self._done.set()
        self._thread.join(timeout=30)


async def test_a_replay_whose_lock_session_is_cut_off_takes_it_again_and_swaps(
    settings: Settings, stack: Stack, unique: str
) -> None:
    ours = await _events_projected(settings, stack, unique, seed=14)
    url = settings.require_database_url()
    everything = _ids(await rows(url, "SELECT id FROM projections.events"))

    cut: list[Progress] = []

    def meanwhile(progress: Progress) -> None:
        if not cut:
            cut.append(progress)
            run_coroutine(lambda: _cut_off_the_replay_lock(url, "events"))

    async with dead_letter_producer(ours) as dead_letters:
        result = await replay(
            ours, events, StartAt(from_beginning=True), dead_letters, on_progress=meanwhile
        )

    assert cut, "the replay reported no progress, so its lock was never cut off"
    assert result.tables == ["events"]
    assert _ids(await rows(url, "SELECT id FROM projections.events")) == everything
    assert await rows(url, "SELECT 1 FROM pg_namespace WHERE nspname = 'replay_events'") == []
    assert await positions(url, "events.replay") == {}


async def test_a_replay_whose_lock_another_took_stops_and_leaves_its_shadow_alone(
    settings: Settings, stack: Stack, unique: str
) -> None:
    ours = await _events_projected(settings, stack, unique, seed=15)
    url = settings.require_database_url()
    table = await rows(url, "SELECT id FROM projections.events ORDER BY id")
    other: list[OtherReplay] = []

    def meanwhile(progress: Progress) -> None:
        if not other:
            other.append(OtherReplay(url, "events"))
            run_coroutine(lambda: _cut_off_the_replay_lock(url, "events"))
            assert other[0].taken.wait(10), "the other replay never took the lock"

    try:
        async with dead_letter_producer(ours) as dead_letters:
            with pytest.raises(ReplayError) as stopped:
                await replay(
                    ours, events, StartAt(from_beginning=True), dead_letters, on_progress=meanwhile
                )
        assert "another replay of events took the lock meanwhile" in str(stopped.value)
        assert await rows(url, "SELECT id FROM projections.events ORDER BY id") == table
        # The shadow is the other replay's now: not dropped from under it.
        assert await rows(url, "SELECT 1 FROM pg_namespace WHERE nspname = 'replay_events'")
    finally:
        for holder in other:
            holder.release()
        await rows(url, "DROP SCHEMA IF EXISTS replay_events CASCADE")
        await rows(url, "DELETE FROM lattice.offsets WHERE projector = 'events.replay'")


async def test_a_replay_stopped_while_the_hydrator_waits_says_so_in_one_line(
    settings: Settings, stack: Stack, unique: str
) -> None:
    """Ctrl-C while Stripe's API is away and the rebuild waits for a thin event's body:
    the replay ends with ReplayError (one `lattice:` line), not a traceback."""
    ours = settings.model_copy(update={"group_prefix": unique})
    url = settings.require_database_url()
    thin, _ = meter_error_report()
    await produce(
        stack.kafka_bootstrap,
        settings.topic,
        [
            build_record(
                orjson.dumps(thin), thin, endpoint="platform", received_at=datetime.now(UTC)
            )
        ],
    )
    asked: list[Record] = []

    async def stripe_away(record: Record) -> Record:
        asked.append(record)
        raise HydrationUnavailable("Stripe's API does not answer")

    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(1.5, stop.set)
    async with dead_letter_producer(ours) as dead_letters:
        with pytest.raises(ReplayError) as stopped:
            await replay(
                ours,
                meters,
                StartAt(from_beginning=True),
                dead_letters,
                hydrate=stripe_away,
                stop=stop,
            )
    assert asked, "the rebuild never asked for the thin event's body"
    assert str(stopped.value) == "replay interrupted; the live tables are unchanged"
    assert await rows(url, "SELECT 1 FROM pg_namespace WHERE nspname = 'replay_meters'") == []


async def test_a_swap_that_cannot_restore_a_view_is_undone_and_said_in_one_line(
    settings: Settings, stack: Stack, unique: str
) -> None:
    """Someone added a column to a live table and a view reading it: the rebuilt table
    lacks the column, so the view cannot be created again. The swap is undone, the live
    tables and the view stay, and the replay says why (not a traceback)."""
    ours = await _events_projected(settings, stack, unique, seed=16)
    url = settings.require_database_url()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("ALTER TABLE projections.events ADD COLUMN note text")
        await conn.execute("CREATE SCHEMA notes")
        await conn.execute("CREATE VIEW notes.noted AS SELECT id, note FROM projections.events")
        table = await conn.fetch("SELECT id FROM projections.events ORDER BY id")
        async with dead_letter_producer(ours) as dead_letters:
            with pytest.raises(ReplayError) as refused:
                await replay(ours, events, StartAt(from_beginning=True), dead_letters)
        assert str(refused.value).startswith("the swap of events failed and was undone (")
        assert "note" in str(refused.value)
        assert str(refused.value).endswith("; the live tables are unchanged")
        assert await conn.fetch("SELECT id FROM projections.events ORDER BY id") == table
        assert await conn.fetchval("SELECT count(*) FROM notes.noted") == len(table)
        assert not await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = 'replay_events'")
    finally:
        await conn.execute("DROP SCHEMA IF EXISTS notes CASCADE")
        await conn.execute("ALTER TABLE projections.events DROP COLUMN IF EXISTS note")
        await conn.close()


async def test_under_steady_traffic_a_reader_never_sees_rows_vanish_at_the_swap(
    settings: Settings, stack: Stack, unique: str
) -> None:
    """Webhooks keep arriving through the whole replay and the live runner keeps up with
    them: at the swap it is always ahead of the rebuild. A reader polling the table must
    never see fewer rows than it saw before."""
    ours = settings.model_copy(
        update={"group_prefix": unique, "projector_batch_size": 50, "projector_batch_wait_ms": 5}
    )
    url = settings.require_database_url()
    everything = records(stream(1400, seed=17))
    await produce(stack.kafka_bootstrap, settings.topic, everything[:800])
    counts: list[int] = []
    sent = everything[:800]
    done = asyncio.Event()

    async def webhooks() -> None:
        for start in range(800, len(everything), 5):
            await produce(stack.kafka_bootstrap, settings.topic, everything[start : start + 5])
            sent.extend(everything[start : start + 5])
            if done.is_set():
                break

    async def reader() -> None:
        conn = await asyncpg.connect(url)
        try:
            while not done.is_set():
                counts.append(await conn.fetchval("SELECT count(*) FROM projections.events"))
                await asyncio.sleep(0.002)
        finally:
            await conn.close()

    async with running(ours, [events]):
        await _caught_up(ours)
        tasks = [asyncio.create_task(webhooks()), asyncio.create_task(reader())]
        try:
            async with dead_letter_producer(ours) as dead_letters:
                result = await replay(ours, events, StartAt(from_beginning=True), dead_letters)
        finally:
            done.set()
            await asyncio.gather(*tasks)
        await _caught_up(ours)

    assert result.tables == ["events"]
    assert len(counts) > 20, "the reader barely ran"
    drops = [(a, b) for a, b in itertools.pairwise(counts) if b < a]
    assert not drops, f"rows vanished from under the reader: {drops[:5]}"
    assert len(sent) > 800, "no webhook arrived during the replay"
    assert _ids(await rows(url, "SELECT id FROM projections.events")) == {
        r.headers[0][1].decode() for r in sent
    }
    assert await rows(url, "SELECT 1 FROM pg_namespace WHERE nspname = 'replay_events'") == []


async def _said(logged: Sequence[Mapping[str, Any]]) -> list[str]:
    return [line["event"] for line in logged]


async def _replay_past_a_reader(
    url: str, query: str, replaying: Settings, *, waits: int, view_owners: Sequence[Any] = ()
) -> tuple[ReplayResult, list[str]]:
    """Replay `events` from the beginning while a reader holds what `query` reads, in a
    transaction it ends once the swap said `waits` times that it waits for readers; the
    result and the events logged."""
    reader = await asyncpg.connect(url)
    try:
        holding = reader.transaction()
        await holding.start()
        await reader.fetchval(query)  # ACCESS SHARE until the transaction ends
        with structlog.testing.capture_logs() as logged:

            async def let_go_once_the_swap_waited() -> None:
                await eventually(
                    lambda: _said(logged),
                    lambda said: said.count("swap waiting for readers") >= waits,
                    timeout=60,
                    what="the swap waiting for the reader",
                )
                await holding.commit()

            letting_go = asyncio.create_task(let_go_once_the_swap_waited())
            async with dead_letter_producer(replaying) as dead_letters:
                result = await replay(
                    replaying,
                    events,
                    StartAt(from_beginning=True),
                    dead_letters,
                    view_owners=view_owners,
                )
            await letting_go
    finally:
        await reader.close()
    return result, [line["event"] for line in logged]


async def test_a_swap_cancelled_by_a_statement_timeout_waits_for_readers_and_keeps_its_lock(
    settings: Settings, stack: Stack, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replay's role has a statement_timeout shorter than the swap's lock_timeout, so
    waiting for a reader ends as a cancelled statement: the swap backs off as for a lock
    timeout, and keeps its session (the replay's lock), rather than taking the cancel for
    the database going away."""
    ours = await _events_projected(settings, stack, unique, seed=18)
    url = settings.require_database_url()
    # Both longer than the defaults, in the same order: the statement_timeout holds for
    # every statement of the replay, and the rebuild's must not reach it on a busy machine.
    monkeypatch.setattr(shadow, "LOCK_TIMEOUT_MS", 4000)
    impatient = ours.model_copy(update={"database_url": f"{url}?statement_timeout=1500"})
    result, said = await _replay_past_a_reader(
        url, "SELECT count(*) FROM projections.events", impatient, waits=3
    )
    assert result.tables == ["events"]
    assert "swap waiting for readers" in said
    assert "replay lock taken again on a new connection" not in said
    assert "database unavailable at the swap; retrying" not in said


async def test_a_reader_of_another_projections_view_makes_the_swap_wait_not_fail(
    settings: Settings, stack: Stack, unique: str
) -> None:
    """`lattice replay` re-runs every installed projection's views.sql at the swap (a view
    may join several projections' tables); CREATE OR REPLACE VIEW waits for a reader of
    that view even though the swap dropped nothing under it. The swap backs off and tries
    again, as for a reader of its own tables, instead of discarding the rebuild."""
    ours = await _events_projected(settings, stack, unique, seed=19)
    url = settings.require_database_url()
    before = await rows(url, EVENTS_TABLE)
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn, [meters])
    finally:
        await conn.close()
    result, said = await _replay_past_a_reader(
        url,
        "SELECT count(*) FROM projections.usage_discrepancies",
        ours,
        waits=2,
        view_owners=[meters],
    )
    assert result.tables == ["events"]
    assert await rows(url, EVENTS_TABLE) == before
    assert "swap waiting for readers" in said


async def test_a_rebuild_commit_whose_answer_was_lost_goes_on_from_the_stored_positions(
    settings: Settings, stack: Stack, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection drops after a rebuild batch's COMMIT reached the server but before
    its answer did: the rebuild reads back where its positions are (they moved) and goes
    on from there, rather than trying the batch again and failing on its own positions."""
    ours = await _events_projected(settings, stack, unique, seed=21)
    url = settings.require_database_url()
    before = await rows(url, EVENTS_TABLE)
    committed = BatchApplier.commit
    lost: list[int] = []

    async def commit_then_lose_the_answer(
        self: BatchApplier,
        batch: Mapping[TopicPartition, Sequence[Record]],
        expected: Mapping[TopicPartition, int | None],
    ) -> Any:
        outcome = await committed(self, batch, expected)
        if not lost:
            lost.append(sum(len(recs) for recs in batch.values()))
            raise ConnectionResetError("connection lost before COMMIT's answer")
        return outcome

    monkeypatch.setattr(BatchApplier, "commit", commit_then_lose_the_answer)
    ours = ours.model_copy(update={"projector_batch_size": 20})
    async with dead_letter_producer(ours) as dead_letters:
        result = await replay(ours, events, StartAt(from_beginning=True), dead_letters)
    assert lost
    assert lost[0] > 0
    assert result.tables == ["events"]
    ends = await log_ends(settings.kafka_bootstrap, settings.topic)
    assert {tp.partition: at for tp, at in result.positions.items()} == ends
    assert await rows(url, EVENTS_TABLE) == before


async def test_a_swap_whose_commit_answer_was_lost_is_known_as_swapped(
    settings: Settings, stack: Stack, unique: str
) -> None:
    """The connection dropped after the server committed the swap, before the answer: the
    retry must see the swap done (the tables it swapped in are the live ones), not report
    a failure for a replay that swapped in; nor take for done a shadow that another
    replay, holding the lock meanwhile, dropped."""
    await _events_projected(settings, stack, unique, seed=19)
    url = settings.require_database_url()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE SCHEMA replay_events")
        await conn.execute("CREATE TABLE replay_events.events (id text)")
        built = [await conn.fetchval("SELECT 'replay_events.events'::regclass::oid")]
        assert not await swap_committed(conn, built)  # not swapped
        await conn.execute("DROP TABLE replay_events.events")
        assert not await swap_committed(conn, built)  # dropped by another replay
        assert not await swap_committed(conn, [])

        swapped = [await conn.fetchval("SELECT 'projections.events'::regclass::oid")]
        assert await swap_committed(conn, swapped)  # a table that is live now
    finally:
        await conn.execute("DROP SCHEMA IF EXISTS replay_events CASCADE")
        await conn.close()


def _fact(identifier: str) -> bytes:
    return orjson.dumps(
        {
            "identifier": identifier,
            "event_name": "api_requests",
            "stripe_customer_id": "cus_NeZwdNtLEOXuvB",
            "value": "3",
            "timestamp": 1_764_064_800,
        }
    )


@pytest.mark.parametrize("committed", [True, False], ids=["committed", "rolled-back"])
async def test_a_swap_cut_off_at_its_commit_while_another_replay_took_the_lock(
    settings: Settings, stack: Stack, unique: str, monkeypatch: pytest.MonkeyPatch, committed: bool
) -> None:
    """The swap's connection was lost at its commit, and another replay took the lock
    before this one connected again. Committed (only the answer lost): the live tables are
    the ones this replay built, and it says so; it used to say another replay took the
    lock and the live tables were unchanged. Not committed: that is what it says, and the
    shadow schema is left to the other replay."""
    ours = await _events_projected(settings, stack, unique, seed=23)
    url = settings.require_database_url()
    everything = _ids(await rows(url, "SELECT id FROM projections.events"))
    live_before = await rows(url, "SELECT 'projections.events'::regclass::oid")
    other: list[OtherReplay] = []
    swapping: list[asyncpg.Connection] = []
    real_swap = shadow.swap
    real_exit = asyncpg.transaction.Transaction.__aexit__

    async def swap(conn: asyncpg.Connection, *args: Any, **kwargs: Any) -> list[str]:
        swapping.append(conn)
        return await real_swap(conn, *args, **kwargs)

    async def cut_off(conn: asyncpg.Connection) -> None:
        conn.terminate()  # the server ends the session (rolling back what it had not committed)
        other.append(OtherReplay(url, "events"))
        assert await asyncio.to_thread(other[0].taken.wait, 10), "the lock stayed taken"

    async def exit_cut_off(self: Any, *exc: Any) -> None:
        if exc[0] is not None or not swapping or self._connection is not swapping[0] or other:
            return await real_exit(self, *exc)
        if committed:
            await real_exit(self, *exc)
            await cut_off(self._connection)
            raise asyncpg.ConnectionDoesNotExistError("connection was closed mid-operation")
        await cut_off(self._connection)
        return await real_exit(self, *exc)  # the commit meets a closed connection

    monkeypatch.setattr(shadow, "swap", swap)
    monkeypatch.setattr(asyncpg.transaction.Transaction, "__aexit__", exit_cut_off)
    try:
        async with dead_letter_producer(ours) as dead_letters:
            if committed:
                result = await replay(ours, events, StartAt(from_beginning=True), dead_letters)
                assert result.tables == ["events"]
            else:
                with pytest.raises(ReplayError, match="took the lock meanwhile; this one stops"):
                    await replay(ours, events, StartAt(from_beginning=True), dead_letters)
        assert other, "the swap's commit was never cut off"
        assert _ids(await rows(url, "SELECT id FROM projections.events")) == everything
        live_after = await rows(url, "SELECT 'projections.events'::regclass::oid")
        assert (live_after != live_before) is committed  # the rebuilt table, or the old one
        shadow_left = await rows(url, "SELECT 1 FROM pg_namespace WHERE nspname = 'replay_events'")
        assert bool(shadow_left) is not committed  # the other replay's now, not dropped
        assert bool(await positions(url, "events.replay")) is not committed
    finally:
        for holder in other:
            holder.release()
        await rows(url, "DROP SCHEMA IF EXISTS replay_events CASCADE")
        await rows(url, "DELETE FROM lattice.offsets WHERE projector = 'events.replay'")


async def test_usage_facts_an_app_aborted_count_nowhere_and_a_replay_reads_past_markers(
    settings: Settings, stack: Stack, unique: str
) -> None:
    """An app writing usage facts in Kafka transactions (exactly-once producers do): a fact
    of an aborted transaction was never reported, and the markers each transaction leaves
    in the log are no records (a replay waiting to read them never ended)."""
    ours = settings.model_copy(update={"group_prefix": unique})
    url = settings.require_database_url()
    app = AIOKafkaProducer(
        bootstrap_servers=stack.kafka_bootstrap, transactional_id=f"{unique}-usage-app"
    )
    await app.start()
    try:
        async with app.transaction():
            await app.send_and_wait(settings.usage_topic, _fact("kept-1"), key=b"cus_1")
        await app.begin_transaction()
        await app.send_and_wait(settings.usage_topic, _fact("aborted-1"), key=b"cus_1")
        await app.abort_transaction()
        async with app.transaction():
            await app.send_and_wait(settings.usage_topic, _fact("kept-2"), key=b"cus_1")
    finally:
        await app.stop()
    facts = "SELECT identifier FROM projections.usage_facts ORDER BY identifier"
    async with running(ours, [meters]):
        # Past the last fact (a position stays after a record, never after a marker); the
        # event log is empty here, so these are the usage topic's.
        await eventually(
            lambda: positions(url, "meters"),
            lambda p: sum(p.values()) == 5,
            timeout=30,
            what="meters past the last fact",
        )
        assert await rows(url, facts) == [("kept-1",), ("kept-2",)]
    async with dead_letter_producer(ours) as dead_letters:
        await asyncio.wait_for(
            replay(ours, meters, StartAt(from_beginning=True), dead_letters), timeout=60
        )
    assert await rows(url, facts) == [("kept-1",), ("kept-2",)]


async def test_replay_since_a_time_reapplies_on_top_of_a_copy_of_the_live_tables(
    settings: Settings, stack: Stack, unique: str
) -> None:
    ours = settings.model_copy(update={"group_prefix": unique})
    url = settings.require_database_url()
    early, late = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 2, tzinfo=UTC)
    stream_ = stream(200, seed=8)
    batches = [
        build_record(e.body, e.event, endpoint="platform", received_at=early if i < 100 else late)
        for i, e in enumerate(stream_)
    ]
    await produce(stack.kafka_bootstrap, settings.topic, batches)
    async with running(ours, [events]):
        await _caught_up(ours)
    everything = _ids(await rows(url, "SELECT id FROM projections.events"))
    # Rows lost by hand (a bug, a bad migration): replay --since restores what it re-reads.
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("DELETE FROM projections.events")
    finally:
        await conn.close()
    kept = {b.headers[0][1].decode() for b in batches[100:]}
    async with dead_letter_producer(ours) as dead_letters:
        await replay(ours, events, StartAt(since=late - timedelta(minutes=1)), dead_letters)
    assert _ids(await rows(url, "SELECT id FROM projections.events")) == kept
    async with dead_letter_producer(ours) as dead_letters:
        await replay(ours, events, StartAt(from_beginning=True), dead_letters)
    assert _ids(await rows(url, "SELECT id FROM projections.events")) == everything


async def test_views_and_grants_survive_a_replay(
    settings: Settings, stack: Stack, unique: str
) -> None:
    ours = await _events_projected(settings, stack, unique, seed=9)
    url = settings.require_database_url()
    reader = f"{unique}_reader"
    conn = await asyncpg.connect(url)
    try:
        # An analyst's schema: a view on a projection table, a view on that view, a grant.
        await conn.execute(f'CREATE ROLE "{reader}"')
        await conn.execute("CREATE SCHEMA analytics")
        await conn.execute(
            "CREATE VIEW analytics.by_type AS "
            "SELECT type, count(*) AS n FROM projections.events GROUP BY type"
        )
        await conn.execute(
            "CREATE VIEW analytics.top_type AS SELECT type FROM analytics.by_type "
            "ORDER BY n DESC, type LIMIT 1"
        )
        await conn.execute(f'GRANT SELECT ON analytics.top_type TO "{reader}"')
        # And grants on the projection's own table and view (a BI role reading them).
        await conn.execute(f'GRANT SELECT, INSERT ON projections.events TO "{reader}"')
        await conn.execute(
            f'GRANT SELECT ON projections.event_types TO "{reader}" WITH GRANT OPTION'
        )
        before = await conn.fetch("SELECT * FROM analytics.by_type ORDER BY type")
        async with dead_letter_producer(ours) as dead_letters:
            await replay(ours, events, StartAt(from_beginning=True), dead_letters)
        assert await conn.fetch("SELECT * FROM analytics.by_type ORDER BY type") == before
        for relation, privilege in [
            ("analytics.top_type", "SELECT"),
            ("projections.events", "SELECT"),
            ("projections.events", "INSERT"),
            ("projections.event_types", "SELECT WITH GRANT OPTION"),
        ]:
            assert await conn.fetchval(
                "SELECT has_table_privilege($1, $2, $3)", reader, relation, privilege
            ), f"{reader} lost {privilege} on {relation}"
        assert not await conn.fetchval(
            "SELECT has_table_privilege($1, 'projections.events', 'DELETE')", reader
        )
        assert await conn.fetchval("SELECT type FROM analytics.top_type") is not None
    finally:
        await conn.execute("DROP SCHEMA IF EXISTS analytics CASCADE")
        if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", reader):
            await conn.execute(f'DROP OWNED BY "{reader}"')  # its grants
        await conn.execute(f'DROP ROLE IF EXISTS "{reader}"')
        await conn.close()


async def test_an_analysts_temporary_view_does_not_stop_a_replay(
    settings: Settings, stack: Stack, unique: str
) -> None:
    """An analyst's session holds a temporary view on a projection table (anyone may
    create one): it cannot be saved and re-created from another session, so the swap
    leaves it to the table's CASCADE, instead of failing after the whole rebuild."""
    ours = await _events_projected(settings, stack, unique, seed=21)
    url = settings.require_database_url()
    analyst = await asyncpg.connect(url)
    try:
        await analyst.execute(
            "CREATE TEMP VIEW mine AS SELECT id FROM projections.events WHERE type LIKE 'invoice.%'"
        )
        async with dead_letter_producer(ours) as dead_letters:
            await replay(ours, events, StartAt(from_beginning=True), dead_letters)
        assert await analyst.fetchval("SELECT to_regclass('pg_temp.mine')") is None
        assert await analyst.fetchval("SELECT count(*) FROM projections.events") > 0
    finally:
        await analyst.close()


async def test_a_replay_that_cannot_open_its_pool_lets_go_of_its_lock(
    settings: Settings, unique: str
) -> None:
    """The lock's session connected, the pool's did not (here: a role allowed one
    connection; elsewhere a server at max_connections): the replay fails with the
    server's answer and lets go of its lock at once, so the next try in the same process
    is not told that another replay is running."""
    url = settings.require_database_url()
    role = f"{unique}_one"
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f"CREATE ROLE \"{role}\" LOGIN CONNECTION LIMIT 1 PASSWORD 'pw'")
        limited = settings.model_copy(update={"database_url": as_user(url, role, "pw")})
        async with dead_letter_producer(settings) as dead_letters:
            with pytest.raises(asyncpg.TooManyConnectionsError):
                await replay(limited, events, StartAt(from_beginning=True), dead_letters)
        # Nothing of it is left: no session, and the lock is free for the next replay.
        assert not await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1", role
        )
        assert await admin.fetchval(
            "SELECT pg_try_advisory_lock($1, hashtext('events'))", REPLAY_LOCK
        )
        await admin.execute("SELECT pg_advisory_unlock_all()")
    finally:
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


async def test_a_view_the_replaying_role_could_not_recreate_is_refused_before_the_rebuild(
    settings: Settings, stack: Stack, unique: str
) -> None:
    """A BI team's view on a projection table, owned by its role, which the role running
    the replay is not a member of: the swap could not drop and create it again, so the
    replay says so at its start, not after the rebuild (and nothing is left behind)."""
    ours = await _events_projected(settings, stack, unique, seed=22)
    url = settings.require_database_url()
    bi, writer = f"{unique}_bi", f"{unique}_writer"
    conn = await asyncpg.connect(url)
    try:
        for role in (bi, writer):
            await conn.execute(f'CREATE ROLE "{role}" NOLOGIN')
        await conn.execute("CREATE SCHEMA bi")
        await conn.execute("CREATE VIEW bi.invoices_seen AS SELECT id FROM projections.events")
        await conn.execute(f'ALTER VIEW bi.invoices_seen OWNER TO "{bi}"')
        await conn.execute(f'GRANT CREATE ON SCHEMA bi TO "{writer}", "{bi}"')
        # The check, as the writer role sees it (the test's own login is a superuser).
        await conn.execute(f'SET ROLE "{writer}"')
        refused = await dependents.not_recreatable(conn, "projections", ["events"])
        await conn.execute("RESET ROLE")
        # (The projection's own view is named too: this writer does not own it either.)
        assert f"bi.invoices_seen (owned by {bi})" in refused

        async def as_writer() -> list[str]:
            await conn.execute(f'SET ROLE "{writer}"')
            try:
                return await dependents.not_recreatable(conn, "projections", ["events"])
            finally:
                await conn.execute("RESET ROLE")

        # A member that does not inherit the owner's privileges cannot drop the view.
        await conn.execute(f'GRANT "{bi}" TO "{writer}" WITH INHERIT FALSE')
        assert f"bi.invoices_seen (owned by {bi})" in await as_writer()
        await conn.execute(f'REVOKE "{bi}" FROM "{writer}"')
        # One that may not SET ROLE to it cannot hand the view back to it (PostgreSQL 16+).
        await conn.execute(f'GRANT "{bi}" TO "{writer}" WITH SET FALSE')
        assert f"bi.invoices_seen (owned by {bi})" in await as_writer()
        await conn.execute(f'REVOKE "{bi}" FROM "{writer}"')
        await conn.execute(f'GRANT "{bi}" TO "{writer}"')
        assert f"bi.invoices_seen (owned by {bi})" not in await as_writer()
        # Nor can the view go back to an owner that may no longer create in its schema.
        await conn.execute(f'REVOKE CREATE ON SCHEMA bi FROM "{bi}"')
        assert f"bi.invoices_seen (owned by {bi})" in await as_writer()
        await conn.execute(f'GRANT CREATE ON SCHEMA bi TO "{bi}"')
        # A superuser may act as every role: the replay goes ahead and keeps the view.
        async with dead_letter_producer(ours) as dead_letters:
            await replay(ours, events, StartAt(from_beginning=True), dead_letters)
        owner = await conn.fetchval(
            "SELECT pg_get_userbyid(relowner) FROM pg_class "
            "WHERE oid = 'bi.invoices_seen'::regclass"
        )
        assert owner == bi
    finally:
        await conn.execute("RESET ROLE")
        await conn.execute("DROP SCHEMA IF EXISTS bi CASCADE")
        for role in (bi, writer):
            if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
                await conn.execute(f'DROP OWNED BY "{role}"')
                await conn.execute(f'DROP ROLE "{role}"')
        await conn.close()


async def test_a_replay_keeps_the_live_time_where_it_reapplies_nothing(
    settings: Settings, stack: Stack, topics: Topics, unique: str
) -> None:
    ours = settings.model_copy(update={"group_prefix": unique})
    url = settings.require_database_url()
    first = datetime(2026, 11, 1, tzinfo=UTC)
    every = list(range(topics.partitions))
    empty = every[-1]  # gets no record, so the live projector stores no position there
    count, batches = 150, []
    for i, e in enumerate(stream(count, seed=5)):
        at = first + timedelta(seconds=i)  # each record its own time, to tell them apart
        record = build_record(e.body, e.event, endpoint="platform", received_at=at)
        if partition_for(record.key, every) != empty:
            batches.append(record)
    await produce(stack.kafka_bootstrap, settings.topic, batches)
    ends = await log_ends(settings.kafka_bootstrap, settings.topic)
    assert ends[empty] == 0, "the stream must leave one partition empty"
    assert all(ends[p] for p in every if p != empty)
    async with running(ours, [events]):
        await eventually(
            lambda: positions(url, "events"),
            lambda p: p == {partition: end for partition, end in ends.items() if end},
            timeout=30,
            what=f"events at the log end {ends}",
        )
    live = await _last_events(url, "events")
    # From one record before partition 0's end: every other partition re-applies nothing.
    # From after the last record: no partition re-applies anything.
    after = first + timedelta(seconds=count)
    for start in (StartAt(partition_offset=(0, ends[0] - 1)), StartAt(since=after)):
        async with dead_letter_producer(ours) as dead_letters:
            await replay(ours, events, start, dead_letters)
        assert await _last_events(url, "events") == {**live, empty: None}, start


async def test_replay_refuses_an_offset_past_the_end_of_its_partition(
    settings: Settings, stack: Stack, unique: str
) -> None:
    ours = await _events_projected(settings, stack, unique, seed=6)
    url = settings.require_database_url()
    table = await rows(url, "SELECT id FROM projections.events ORDER BY id")
    stored = await _last_events(url, "events")
    ends = await log_ends(settings.kafka_bootstrap, settings.topic)
    past = ends[2] + 1
    async with dead_letter_producer(ours) as dead_letters:
        with pytest.raises(ReplayError) as refused:
            await replay(ours, events, StartAt(partition_offset=(2, past)), dead_letters)
    assert str(refused.value) == (
        f"offset {past} is outside {settings.topic}:2, which holds 0..{ends[2]}"
    )
    assert await rows(url, "SELECT id FROM projections.events ORDER BY id") == table
    assert await _last_events(url, "events") == stored
    assert await positions(url, "events.replay") == {}
    assert await rows(url, "SELECT 1 FROM pg_namespace WHERE nspname = 'replay_events'") == []


async def test_replay_on_top_of_live_positions_past_the_log_end_is_refused(
    settings: Settings, stack: Stack, unique: str
) -> None:
    """The topic deleted and created again (here: the live positions moved past its end):
    a rebuild from a partition's offset or a time copies the live positions of the other
    partitions, which the log never reaches. Refused before anything is rebuilt (the
    shadow is dropped), naming the way out."""
    ours = await _events_projected(settings, stack, unique, seed=8)
    url = settings.require_database_url()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "UPDATE lattice.offsets SET next_offset = next_offset + 1000 "
            "WHERE projector = 'events' AND topic = $1 AND partition = 1",
            settings.topic,
        )
    finally:
        await conn.close()
    table = await rows(url, EVENTS_TABLE)
    async with dead_letter_producer(ours) as dead_letters:
        with pytest.raises(ReplayError) as refused:
            await replay(ours, events, StartAt(partition_offset=(0, 0)), dead_letters)
    said = str(refused.value)
    assert f"past the log end ({settings.topic}:1 at " in said
    assert said.endswith("`lattice replay events --from-beginning` rebuilds from what it holds")
    assert await rows(url, EVENTS_TABLE) == table
    assert await positions(url, "events.replay") == {}


async def test_replay_without_its_dead_letter_topic_is_refused_before_anything_is_built(
    settings: Settings, stack: Stack, unique: str
) -> None:
    """A poison record met during the rebuild is sent to the dead-letter topic: without it,
    the send would wait for the topic for ever. Refused first, naming it."""
    lone = f"{unique}.lone.stripe.events"
    await ensure_topics(stack.kafka_bootstrap, [lone], partitions=2)
    try:
        ours = settings.model_copy(update={"topic": lone})
        async with dead_letter_producer(ours) as dead_letters:
            with pytest.raises(ReplayError, match=rf"^topic {lone}\.dlq does not exist"):
                await replay(ours, events, StartAt(from_beginning=True), dead_letters)
        url = settings.require_database_url()
        assert await positions(url, "events.replay") == {}
    finally:
        await delete_topics(stack.kafka_bootstrap, [lone])


async def test_a_replay_stopped_while_it_prepares_stops_at_once(
    settings: Settings, stack: Stack, unique: str
) -> None:
    """Ctrl-C (or SIGTERM) while the replay waits for a reader to migrate, or copies the
    live tables for `--since` (minutes for large ones): the work is cancelled, its
    statement with it, and the replay ends in one line leaving nothing behind (it went on
    until the work was done)."""
    ours = await _events_projected(settings, stack, unique, seed=27)
    url = settings.require_database_url()
    table = await rows(url, EVENTS_TABLE)
    blocker = await asyncpg.connect(url)
    stop = asyncio.Event()
    try:
        holding = blocker.transaction()
        await holding.start()
        # The replay waits for this lock: as long as a copy of many rows would take.
        await blocker.execute("LOCK TABLE projections.events IN ACCESS EXCLUSIVE MODE")

        async def stop_once_copying() -> None:
            await eventually(
                lambda: rows(
                    url,
                    "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND pid <> pg_backend_pid() AND datname = current_database()",
                ),
                bool,
                timeout=30,
                what="the replay waiting for the live table",
            )
            stop.set()

        stopping = asyncio.create_task(stop_once_copying())
        async with dead_letter_producer(ours) as dead_letters:
            with pytest.raises(ReplayError, match="interrupted; the live tables are unchanged"):
                await asyncio.wait_for(
                    replay(
                        ours,
                        events,
                        StartAt(since=datetime.now(UTC) - timedelta(days=1)),
                        dead_letters,
                        stop=stop,
                    ),
                    timeout=30,
                )
        await stopping
        await holding.rollback()
    finally:
        await blocker.close()
    assert await rows(url, EVENTS_TABLE) == table
    assert await positions(url, "events.replay") == {}
    assert await rows(url, "SELECT 1 FROM pg_namespace WHERE nspname = 'replay_events'") == []


async def test_a_swap_never_undoes_a_migration_the_live_tables_have(
    settings: Settings, stack: Stack, unique: str
) -> None:
    """A newer version migrated the live tables while the replay ran: swapping in tables
    built without that migration would undo it (with `lattice.migrations` still listing
    it), so the swap refuses and the live tables stay. A replay started after that is
    refused at once, before it rebuilds anything."""
    ours = await _events_projected(settings, stack, unique, seed=7)
    url = settings.require_database_url()
    table = await rows(url, "SELECT id FROM projections.events ORDER BY id")
    stored = await _last_events(url, "events")

    async def deploy_newer() -> None:
        await rows(
            url,
            "INSERT INTO lattice.migrations (projector, version, name) "
            "VALUES ('events', 9999, '9999_from_a_newer_version') ON CONFLICT DO NOTHING",
        )

    def meanwhile(progress: Progress) -> None:
        run_coroutine(deploy_newer)  # while the rebuild runs

    refusal = "the live tables of events have migrations this version lacks (9999:"
    async with dead_letter_producer(ours) as dead_letters:
        with pytest.raises(ReplayError) as at_swap:
            await replay(
                ours, events, StartAt(from_beginning=True), dead_letters, on_progress=meanwhile
            )
        assert str(at_swap.value).startswith(refusal)
        assert await rows(url, "SELECT id FROM projections.events ORDER BY id") == table
        assert await _last_events(url, "events") == stored
        assert await rows(url, "SELECT 1 FROM pg_namespace WHERE nspname = 'replay_events'") == []

        progress: list[Progress] = []
        with pytest.raises(ReplayError) as at_start:
            await replay(
                ours,
                events,
                StartAt(from_beginning=True),
                dead_letters,
                on_progress=progress.append,
            )
        assert str(at_start.value).startswith(refusal)
        assert progress == []  # nothing was rebuilt


class _StoresBetween:
    """A connection on which another session stores a position right after the first
    DELETE: a live runner's first commit on a partition, between adopt's two statements."""

    def __init__(self, conn: asyncpg.Connection, other: asyncpg.Connection, name: str) -> None:
        self.conn, self.other, self.name, self.stored = conn, other, name, False

    async def execute(self, query: str, *args: Any) -> str:
        done: str = await self.conn.execute(query, *args)
        if query.startswith("DELETE") and not self.stored:
            self.stored = True
            await self.other.execute(
                "INSERT INTO lattice.offsets (projector, topic, partition, next_offset) "
                "VALUES ($1, 'stripe.events', 5, 3)",
                self.name,
            )
        return done


async def test_a_runners_first_position_stored_during_the_swap_does_not_undo_it(
    settings: Settings, unique: str
) -> None:
    """The swap locks the live positions there are; a runner storing its first position
    of a partition meanwhile (a batch that changed no table) must not fail the swap on
    the key they share: the rebuild's position wins (the runner's next commit then fails
    its compare-and-set and it goes on from there)."""
    url = settings.require_database_url()
    name, rebuilt = f"{unique}-adopt", shadow.replay_key(f"{unique}-adopt")
    conn, other = await asyncpg.connect(url), await asyncpg.connect(url)
    try:
        await ensure_runtime(conn)
        await conn.executemany(
            "INSERT INTO lattice.offsets (projector, topic, partition, next_offset) "
            "VALUES ($1, 'stripe.events', $2, $3)",
            [(name, 0, 7), (rebuilt, 0, 9), (rebuilt, 5, 11)],
        )
        between = _StoresBetween(conn, other, name)
        async with conn.transaction():
            await offsets.adopt(cast(asyncpg.Connection, between), name, rebuilt)
        assert between.stored
        found = await conn.fetch(
            "SELECT projector, partition, next_offset FROM lattice.offsets "
            "WHERE projector IN ($1, $2) ORDER BY partition",
            name,
            rebuilt,
        )
        assert [tuple(r) for r in found] == [(name, 0, 9), (name, 5, 11)]
    finally:
        await conn.execute("DELETE FROM lattice.offsets WHERE projector IN ($1, $2)", name, rebuilt)
        await conn.close()
        await other.close()
