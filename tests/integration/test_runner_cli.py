"""The commands as an operator runs them: project (SIGTERM), migrate, status, replay, rewind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from deploy.settings import Settings
from deploy.stack import kafka
from deploy.stack.topics import ensure_topics
from projectors.migrate import ADVISORY_LOCK_KEY
from projectors.rewind import committed
from tests.conftest import Stack
from tests.support.homes import server_home, share_kafka_jars
from tests.support.kafka import delete_records_before
from tests.support.ports import free_port
from tests.support.projectors import ROOT, extra_database, log_ends, positions
from tests.support.stripe_stream import produce, records, stream
from tests.support.wait import eventually

pytestmark = pytest.mark.integration


def _env(settings: Settings, unique: str) -> dict[str, str]:
    return {
        **os.environ,
        "LATTICE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "LATTICE_DATABASE_URL": settings.require_database_url(),
        "LATTICE_TOPIC": settings.topic,
        "LATTICE_GROUP_PREFIX": unique,
    }


def _lattice(
    settings: Settings, unique: str, *args: str, **changed: str
) -> subprocess.CompletedProcess[str]:
    """`lattice ARGS` with the test's settings, and `changed` environment variables."""
    return subprocess.run(
        [sys.executable, "-m", "deploy.cli", *args],
        cwd=ROOT,
        env={**_env(settings, unique), **changed},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _start(settings: Settings, unique: str, log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "deploy.cli", *args],
            cwd=ROOT,
            env=_env(settings, unique),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def _run(
    settings: Settings, unique: str, *args: str, **changed: str
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(_lattice, settings, unique, *args, **changed)


async def test_project_migrate_status_and_replay_from_the_command_line(
    settings: Settings, stack: Stack, unique: str, tmp_path: Path
) -> None:
    migrated = await _run(settings, unique, "migrate", "events")
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.splitlines() == ["applied events/0001_events"]
    again = await _run(settings, unique, "migrate", "events")
    assert (again.returncode, again.stdout) == (0, "")

    await produce(stack.kafka_bootstrap, settings.topic, [*records(stream(150)), b"poison"])
    log = tmp_path / "project.log"
    port = free_port()
    proc = _start(settings, unique, log, "project", "events", "--metrics-port", str(port))
    try:
        ends = await log_ends(stack.kafka_bootstrap, settings.topic)
        url = settings.require_database_url()
        await eventually(lambda: positions(url, "events"), lambda p: p == ends, timeout=30)
        async with httpx.AsyncClient() as client:

            async def scrape() -> str:
                return (await client.get(f"http://127.0.0.1:{port}/metrics")).text

            # The counters move just after the commit the positions show.
            applied = 'lattice_projector_events_applied_total{projector="events"} 151.0'
            metrics = await eventually(scrape, lambda text: applied in text, timeout=10)
        assert 'lattice_projector_dead_letters_total{projector="events"} 1.0' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
    assert code == 0, log.read_text()[-2000:]
    assert "projector stopped" in log.read_text()

    # Another projector's positions: `status events` leaves them out, `status` shows them.
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "INSERT INTO lattice.offsets (projector, topic, partition, next_offset) "
            "VALUES ('invoices', $1, 0, 1)",
            settings.topic,
        )
    finally:
        await conn.close()
    everything = await _run(settings, unique, "status", "--json")
    assert {r["projector"] for r in orjson.loads(everything.stdout)} >= {"events", "invoices"}
    shown = await _run(settings, unique, "status", "events", "--json")
    assert shown.returncode == 0, shown.stderr
    report = orjson.loads(shown.stdout)
    assert {r["projector"] for r in report} == {"events"}
    assert {(r["partition"], r["position"], r["lag"]) for r in report} == {
        (p, end, 0) for p, end in ends.items()
    }
    assert sum(r["dead_letters"] for r in report) == 1
    assert all(r["last_event_at"] for r in report if r["position"])
    table = await _run(settings, unique, "status", "events")
    assert table.stdout.splitlines()[0].split()[:3] == ["PROJECTOR", "TOPIC", "PART"]
    assert "warning" not in table.stderr
    # A mistyped topic: the projectors would wait for it; status says so.
    typo = f"{settings.topic}s"
    mistyped = await _run(settings, unique, "status", "events", LATTICE_TOPIC=typo)
    assert mistyped.returncode == 0, mistyped.stderr
    assert f"warning: topic {typo} does not exist on the broker" in mistyped.stderr

    # No start named: from the beginning, as `--from-beginning` (DESIGN.md's syntax).
    replayed = await _run(settings, unique, "replay", "events")
    assert replayed.returncode == 0, replayed.stderr
    assert f"rebuilt from {sum(ends.values()):,} events" in replayed.stderr
    assert "events/s" in replayed.stderr
    assert "left" in replayed.stderr
    assert "swapped in (events)" in replayed.stderr
    bad = await _run(settings, unique, "replay", "events", "--since", "yesterday")
    assert bad.returncode == 2
    assert "RFC 3339" in bad.stderr
    empty = await _run(settings, unique, "replay", "events", "--since", "")  # "$SINCE" unset
    assert empty.returncode == 2, empty.stderr
    assert "rebuilt" not in empty.stderr


async def test_rewind_moves_a_stopped_downstream_group_and_refuses_a_running_one(
    settings: Settings, stack: Stack, unique: str
) -> None:
    await produce(stack.kafka_bootstrap, settings.topic, records(stream(60)))
    group = f"{unique}.billing-exports"
    consumer = AIOKafkaConsumer(
        settings.topic,
        bootstrap_servers=stack.kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        ends = await log_ends(stack.kafka_bootstrap, settings.topic)
        remaining = sum(ends.values())
        while remaining > 0:
            batch = await consumer.getmany(timeout_ms=1000)
            remaining -= sum(len(msgs) for msgs in batch.values())
        await consumer.commit()
        refused = await _run(settings, unique, "rewind", group, "--to-offset", "0:1")
        assert refused.returncode == 1
        assert refused.stderr.startswith("lattice: the broker refused"), refused.stderr
        assert "stop them" in refused.stderr
    finally:
        await consumer.stop()

    moved = await _run(settings, unique, "rewind", group, "--to-offset", "0:1")
    assert moved.returncode == 0, moved.stderr
    after = await committed(stack.kafka_bootstrap, group)
    assert after[TopicPartition(settings.topic, 0)] == 1
    assert after[TopicPartition(settings.topic, 1)] == ends[1]
    # A time after every record: a group still behind it on a partition stays there (at
    # the end it would skip what it has not read), the others are at the end already.
    lately = datetime.now(UTC) - timedelta(milliseconds=200)
    later = await _run(settings, unique, "rewind", group, "--since", lately.isoformat())
    assert later.returncode == 0, later.stderr
    assert await committed(stack.kafka_bootstrap, group) == after
    since = await _run(settings, unique, "rewind", group, "--since", "1970-01-01T00:00:00Z")
    assert since.returncode == 0, since.stderr
    assert set((await committed(stack.kafka_bootstrap, group)).values()) == {0}
    # A future time would move the group to the log end, past everything it has not read.
    future = await _run(settings, unique, "rewind", group, "--since", "2999-01-01T00:00:00Z")
    assert future.returncode == 2
    assert "in the future" in future.stderr
    assert set((await committed(stack.kafka_bootstrap, group)).values()) == {0}
    # A mistyped group is refused, not created; --new-group gives a new one its positions.
    typo = f"{unique}.billing-exprots"
    mistyped = await _run(settings, unique, "rewind", typo, "--since", "0")
    assert mistyped.returncode == 1
    assert "no committed offsets" in mistyped.stderr
    assert "--new-group" in mistyped.stderr
    assert await committed(stack.kafka_bootstrap, typo) == {}
    new = await _run(settings, unique, "rewind", typo, "--since", "0", "--new-group")
    assert new.returncode == 0, new.stderr
    assert set((await committed(stack.kafka_bootstrap, typo)).values()) == {0}
    # A group that never committed on partitions 1.. (added to the topic since, say): their
    # consumer starts as its auto.offset.reset says; --since leaves them alone.
    partial = f"{unique}.partial"
    first = await _run(settings, unique, "rewind", partial, "--to-offset", "0:5", "--new-group")
    assert first.returncode == 0, first.stderr
    alone = await _run(settings, unique, "rewind", partial, "--since", "0")
    assert alone.returncode == 0, alone.stderr
    assert await committed(stack.kafka_bootstrap, partial) == {TopicPartition(settings.topic, 0): 0}
    assert f"{partial} {settings.topic}:0 5 -> 0" in alone.stdout
    assert f"{settings.topic}:1 - (never committed" in alone.stdout
    # A projector's group under this deployment's prefix (LATTICE_GROUP_PREFIX, here
    # `unique`; `lattice` by default) keeps its positions in PostgreSQL: refused.
    ours = await _run(settings, unique, "rewind", f"{unique}.events", "--since", "0")
    assert ours.returncode == 2
    assert "lattice replay events" in ours.stderr
    flag = await _run(
        settings, unique, "rewind", "staging.events", "--since", "0", "--group-prefix", "staging"
    )
    assert flag.returncode == 2
    assert "lattice replay events" in flag.stderr
    # A group behind where the log now starts (retention deleted offsets 0-2 of partition
    # 0) goes to that start, not back to its deleted offset (its consumer would reset).
    await delete_records_before(stack.kafka_bootstrap, TopicPartition(settings.topic, 0), 3)
    later = await _run(settings, unique, "rewind", group, "--since", lately.isoformat())
    assert later.returncode == 0, later.stderr
    assert await committed(stack.kafka_bootstrap, group) == {
        tp: 3 if tp.partition == 0 else 0 for tp in after
    }


async def test_status_names_offsets_deleted_before_a_projector_read_them(
    settings: Settings, stack: Stack, unique: str
) -> None:
    """A retention someone set on the topic deleted offsets 1-3 of partition 0 while the
    projector's stored position there was 1: the table shows the position, and a warning
    on stderr says which offsets went unread (their records are missing for good)."""
    migrated = await _run(settings, unique, "migrate", "events")
    assert migrated.returncode == 0, migrated.stderr
    await produce(stack.kafka_bootstrap, settings.topic, records(stream(40)))
    tp = TopicPartition(settings.topic, 0)
    end = (await log_ends(stack.kafka_bootstrap, settings.topic))[0]
    assert end >= 4, "too few records on partition 0 for the test"
    conn = await asyncpg.connect(settings.require_database_url())
    try:
        await conn.execute(
            "INSERT INTO lattice.offsets (projector, topic, partition, next_offset) "
            "VALUES ('events', $1, 0, 1)",
            settings.topic,
        )
    finally:
        await conn.close()
    await delete_records_before(stack.kafka_bootstrap, tp, 4)
    shown = await _run(settings, unique, "status", "events", "--json")
    assert shown.returncode == 0, shown.stderr
    [zero] = [r for r in orjson.loads(shown.stdout) if r["partition"] == 0]
    assert (zero["position"], zero["log_start"], zero["log_end"]) == (1, 4, end)
    assert zero["lag"] == end - 4  # what is left to read, not the offsets deleted
    warned = [line for line in shown.stderr.splitlines() if "deleted from the log" in line]
    assert warned == [
        f"warning: events {settings.topic}:0: offsets 1-3 were deleted from the log before it "
        "read them (a retention set on the topic, or records deleted); the records among "
        "them are missing from its tables for good"
    ]


async def test_a_session_timeout_the_broker_refuses_is_one_line_naming_the_setting(
    settings: Settings, unique: str
) -> None:
    # The local stack allows 1000 ms at least (group.min.session.timeout.ms), brokers
    # elsewhere 6000 ms.
    refused = await _run(
        settings, unique, "project", "events", "--projector-session-timeout-ms", "500"
    )
    assert refused.returncode == 2, refused.stderr
    last = refused.stderr.splitlines()[-1]  # after the JSON log lines
    assert last.startswith("lattice: the broker refuses LATTICE_PROJECTOR_SESSION_TIMEOUT_MS=500")
    assert "group.min.session.timeout.ms" in last
    assert "Traceback" not in refused.stderr


@pytest.mark.parametrize("down", ["postgresql", "kafka", "topic"])
async def test_project_waits_for_what_is_down_and_stops_on_sigterm(
    settings: Settings, unique: str, tmp_path: Path, down: str
) -> None:
    nobody = free_port()  # nothing listens there
    env = _env(settings, unique)
    if down == "postgresql":
        env["LATTICE_DATABASE_URL"] = f"postgresql://postgres:pw-{unique}@127.0.0.1:{nobody}/x"
        waiting = f"waiting for PostgreSQL at 127.0.0.1:{nobody}/x"
    elif down == "kafka":
        env["LATTICE_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{nobody}"
        waiting = f"waiting for Kafka at 127.0.0.1:{nobody}"
    else:  # not created yet, or mistyped (it was aiokafka's traceback after 40 s)
        env["LATTICE_TOPIC"] = f"missing-{unique}.stripe.events"
        missing = f"missing-{unique}.stripe.events"  # and its dead-letter topic
        waiting = f"no topic {missing}, {missing}.dlq on the broker yet"
    log = tmp_path / "project.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: ASYNC220 (started once; nothing waits on it here)
            [sys.executable, "-m", "deploy.cli", "project", "events"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        async def tries() -> int:
            assert proc.poll() is None, log.read_text()
            return log.read_text().count(waiting)

        await eventually(tries, lambda n: n >= 2, what=waiting)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 15)
    output = log.read_text()
    assert code == 0, output
    assert "Traceback" not in output
    assert f"pw-{unique}" not in output  # the password in the URL is never shown
    assert all(isinstance(orjson.loads(line), dict) for line in output.splitlines())


@pytest.mark.parametrize(
    "command",
    [
        ["project", "events"],
        ["migrate", "events"],
        ["status"],
        ["backfill", "--since", "2026-11-01T00:00:00Z"],
    ],
)
async def test_a_database_that_does_not_exist_is_one_line_and_a_settings_exit_status(
    settings: Settings, unique: str, command: list[str]
) -> None:
    """A database name (or a login) the server refuses is a wrong setting, which no wait
    mends: exit status 2, as for any bad setting, from the service and the one-shot
    commands alike."""
    url = settings.require_database_url().rsplit("/", 1)[0] + f"/missing_{unique}"
    stripe = {  # backfill asks PostgreSQL first; nothing listens on port 9
        "LATTICE_STRIPE_API_KEY": "sk_test_unused",
        "LATTICE_STRIPE_API_BASE": "http://127.0.0.1:9",
    }
    result = await _run(settings, unique, *command, LATTICE_DATABASE_URL=url, **stripe)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("lattice: PostgreSQL "), result.stderr
    assert f'database "missing_{unique}" does not exist' in last
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [["project", "events"], ["migrate", "events"]])
async def test_a_database_url_asyncpg_cannot_use_ends_at_once_in_one_line(
    settings: Settings, unique: str, command: list[str]
) -> None:
    """No wait mends `sslmode=bogus`: `project` must not wait for it for ever."""
    url = settings.require_database_url() + "?sslmode=bogus"
    result = await _run(settings, unique, *command, LATTICE_DATABASE_URL=url)
    assert result.returncode == 2, result.stderr
    assert "sslmode" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr


async def test_a_start_refused_for_an_edited_migration_is_one_line(
    settings: Settings, stack: Stack, unique: str
) -> None:
    """`lattice project` refuses a migration changed after it was applied as `lattice
    migrate` does: one line naming the file, exit status 1 (it was a traceback)."""
    assert (await _run(settings, unique, "migrate", "events")).returncode == 0
    conn = await asyncpg.connect(settings.require_database_url())
    try:  # what an edit of the file looks like from the database: another checksum
        await conn.execute(
            "UPDATE lattice.migrations SET sha256 = repeat('0', 64) WHERE projector = 'events'"
        )
    finally:
        await conn.close()
    for command in ("migrate", "project"):
        result = await _run(settings, unique, command, "events")
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("lattice: "), result.stderr
        assert "0001_events.sql was changed after it was applied to this database" in last


@pytest.mark.parametrize(
    ("command", "down"),
    [
        (["status"], "LATTICE_DATABASE_URL"),
        (["status"], "LATTICE_KAFKA_BOOTSTRAP"),
        (["migrate", "events"], "LATTICE_DATABASE_URL"),
        (["replay", "events", "--from-beginning"], "LATTICE_KAFKA_BOOTSTRAP"),
        (["rewind", "billing-exports", "--since", "0"], "LATTICE_KAFKA_BOOTSTRAP"),
    ],
)
async def test_a_one_shot_command_that_cannot_reach_a_service_says_so_in_one_line(
    settings: Settings, unique: str, command: list[str], down: str
) -> None:
    nobody = free_port()
    where = (
        f"postgresql://postgres@127.0.0.1:{nobody}/x"
        if down == "LATTICE_DATABASE_URL"
        else f"127.0.0.1:{nobody}"
    )
    result = await _run(settings, unique, *command, **{down: where})
    assert result.returncode == 1, result.stderr
    said = result.stderr.strip().splitlines()
    if command[0] != "replay":  # a replay logs its progress before, in JSON lines
        assert len(said) == 1, result.stderr
    last = said[-1]
    if down == "LATTICE_KAFKA_BOOTSTRAP":  # the error says it was Kafka: named alone, once
        assert last.startswith("lattice: cannot reach Kafka: KafkaConnectionError: ")
        assert last.count("KafkaConnectionError") == 1
    else:  # a socket's error, which does not say whose: the client it came from does
        assert last.startswith("lattice: cannot reach PostgreSQL: "), result.stderr
        assert "Kafka" not in last
    assert str(nobody) in last  # the address it tried
    assert "Traceback" not in result.stderr
    assert "Unclosed" not in result.stderr


async def test_what_postgresql_refuses_a_one_shot_command_is_one_line(
    settings: Settings, stack: Stack, unique: str
) -> None:
    """A read-only server (a replica, or a role whose transactions are read-only): the
    migration fails with PostgreSQL's reason in one line, not a traceback."""
    async with extra_database(stack.database_url, f"{unique}_ro") as url:
        read_only = f"{url}{'&' if '?' in url else '?'}default_transaction_read_only=on"
        result = await _run(settings, unique, "migrate", LATTICE_DATABASE_URL=read_only)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        "lattice: PostgreSQL: ReadOnlySQLTransactionError: "
        "cannot execute CREATE SCHEMA in a read-only transaction"
    ], result.stderr


async def test_project_is_ready_only_once_its_projectors_run(
    settings: Settings, unique: str, tmp_path: Path
) -> None:
    """`--metrics-port` also serves `/readyz`: 503 while the process waits for what it
    needs (here Kafka, at an address where nothing listens), with the metrics served all
    along; 200 once its projectors run. A rollout gated on it keeps the old pods."""
    nowhere, port = free_port(), free_port()
    args = [sys.executable, "-m", "deploy.cli", "project", "events", "--metrics-port", str(port)]
    url = f"http://127.0.0.1:{port}"

    async def get(client: httpx.AsyncClient, path: str) -> int:
        try:
            return (await client.get(url + path)).status_code
        except httpx.TransportError:
            return 0  # not listening yet

    async with httpx.AsyncClient() as client:
        for bootstrap, wanted in ((f"127.0.0.1:{nowhere}", 503), (settings.kafka_bootstrap, 200)):
            env = {**_env(settings, unique), "LATTICE_KAFKA_BOOTSTRAP": bootstrap}
            with (tmp_path / f"project-{wanted}.log").open("wb") as out:
                proc = await asyncio.create_subprocess_exec(
                    *args, cwd=ROOT, env=env, stdout=out, stderr=out
                )
            try:
                await eventually(
                    lambda: get(client, "/readyz"), wanted.__eq__, timeout=30, what="/readyz"
                )
                if wanted == 503:
                    # Still waiting a while later, and the metrics answer meanwhile.
                    await asyncio.sleep(2)
                    assert await get(client, "/readyz") == 503
                    assert await get(client, "/metrics") == 200
                answer = await client.get(url + "/readyz")
                assert answer.json() == {"ready": wanted == 200}
            finally:
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(proc.wait(), 30) == 0


async def _sigterm_while_migrations_wait(
    settings: Settings, unique: str, tmp_path: Path, *args: str
) -> tuple[int, str]:
    """`lattice ARGS` started while another session holds the migration lock, and sent a
    SIGTERM once it says it waits for it: its exit status and output."""
    holder = await asyncpg.connect(settings.require_database_url())
    log = tmp_path / "lattice.log"
    try:
        async with holder.transaction():
            await holder.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK_KEY)
            proc = _start(settings, unique, log, *args)
            try:
                await eventually(
                    lambda: asyncio.sleep(0, log.read_text()),
                    lambda text: "migrations wait for another process's" in text,
                    timeout=60,
                    what="the start waiting for the other process's migrations",
                )
                assert proc.poll() is None, log.read_text()
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    code = await asyncio.to_thread(proc.wait, 30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    raise AssertionError(f"{args} ignored the SIGTERM for 30 s") from None
    finally:
        await holder.close()
    output = log.read_text()
    assert "Traceback" not in output
    return code, output


@pytest.mark.parametrize("name", ["events", "meters"])
async def test_sigterm_stops_a_start_waiting_for_another_process_migrations(
    settings: Settings, unique: str, tmp_path: Path, name: str
) -> None:
    """Another process holds the migration lock (its migrations wait for a reader): a
    SIGTERM ends the waiting start with status 0 and a line saying so. A projection that
    hydrates thin events (`meters`) waited in the hydrator's start, which no signal
    handler covered: SIGTERM killed the process there, with no word of why."""
    code, output = await _sigterm_while_migrations_wait(settings, unique, tmp_path, "project", name)
    assert code == 0, output
    [stopped] = [
        orjson.loads(line)
        for line in output.splitlines()
        if "projectors stopped before they started" in line
    ]
    assert stopped["why"] == "stopped while the migrations waited"


async def test_sigterm_stops_a_replay_waiting_for_another_process_migrations(
    settings: Settings, unique: str, tmp_path: Path
) -> None:
    """The same wait in a replay of a hydrating projection: the SIGTERM was noted and
    ignored until the other process's migrations ended."""
    code, output = await _sigterm_while_migrations_wait(
        settings, unique, tmp_path, "replay", "meters"
    )
    assert code == 1, output
    assert output.splitlines()[-1] == "lattice: replay interrupted; the live tables are unchanged"


async def test_sigterm_stops_a_projector_whose_group_never_gets_a_coordinator(
    settings: Settings, unique: str, tmp_path: Path
) -> None:
    """A cluster that cannot give a consumer group its coordinator (here a broker that
    cannot create `__consumer_offsets`: replication 3 on one node): the projector's start
    waits, unready, and a SIGTERM still stops it at once with status 0 (before, it waited
    for the SIGKILL)."""
    with server_home("kafka-nocoordinator") as home:
        port = free_port(2)
        share_kafka_jars(home)
        kafka.start(
            home,
            port=port,
            partitions=1,
            timeout=90,
            extra_properties="\noffsets.topic.replication.factor=3\n",
        )
        try:
            bootstrap = f"127.0.0.1:{port}"
            await ensure_topics(
                bootstrap, [settings.topic, settings.dlq_topic, settings.usage_topic], partitions=1
            )
            metrics = free_port()
            env = {**_env(settings, unique), "LATTICE_KAFKA_BOOTSTRAP": bootstrap}
            log = tmp_path / "project.log"
            with log.open("wb") as out:
                proc = await asyncio.create_subprocess_exec(
                    *[sys.executable, "-m", "deploy.cli", "project", "events"],
                    *["--metrics-port", str(metrics)],
                    cwd=ROOT,
                    env=env,
                    stdout=out,
                    stderr=out,
                )
            try:
                await eventually(
                    lambda: asyncio.sleep(0, log.read_text()),
                    lambda text: "GroupCoordinatorNotAvailableError" in text,
                    timeout=60,
                    what="the start waiting for a coordinator",
                )
                async with httpx.AsyncClient() as client:
                    ready = await client.get(f"http://127.0.0.1:{metrics}/readyz")
                assert ready.status_code == 503
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    code = await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
                    raise AssertionError("the projector did not stop within 30 s") from None
            assert code == 0, log.read_text()[-3000:]
            assert "projector stopped before it started" in log.read_text()
        finally:
            kafka.stop(home)
