"""The stack is real: Kafka keeps keys, headers and bytes; PostgreSQL round-trips; a second
`stack up` does no harm; a broker keeps its data across a stop and start."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import pytest
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from deploy import stack
from deploy.settings import Settings, load_settings
from deploy.stack import kafka, postgres
from deploy.stack.errors import StackError
from deploy.stack.topics import delete_topics, ensure_topics
from tests.conftest import Stack, Topics
from tests.support.homes import share_kafka_jars
from tests.support.kafka import read_all
from tests.support.ports import free_port

LATTICE = [sys.executable, "-m", "deploy.cli"]
REPO = Path(__file__).resolve().parents[2]


async def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(
                topic, value, key=key, headers=[("stripe-event-id", key), ("empty", b"")]
            )
    finally:
        await producer.stop()


async def test_records_come_back_with_key_headers_and_bytes_intact(
    stack: Stack, topics: Topics
) -> None:
    # Bytes that a re-encoding would change: odd spacing, escapes, non-ASCII, no newline.
    values = [b'{"id":"evt_1", "x" :  "\\u00e9\xc3\xa9"}', b"\x00\xff raw", b"{}"]
    records = [(f"sub_{i}".encode(), value) for i, value in enumerate(values)]
    await _produce(stack.kafka_bootstrap, topics.events, records)
    got = await read_all(stack.kafka_bootstrap, topics.events)
    assert sorted((r.key, r.value) for r in got) == sorted(records)
    for record in got:
        assert record.headers == {"stripe-event-id": record.key, "empty": b""}


async def test_postgres_round_trips_types_we_rely_on(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT $1::numeric AS n, $2::text[] AS a, to_timestamp(1764064800) AS t",
            "0.1",
            ["x", "y"],
        )
        assert row is not None
        assert str(row["n"]) == "0.1"
        assert row["a"] == ["x", "y"]
        assert int(row["t"].timestamp()) == 1764064800
    finally:
        await conn.close()


def test_a_second_stack_up_is_a_no_op(stack: Stack) -> None:
    result = subprocess.run(
        [*LATTICE, "stack", "up"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "already running" in result.stderr
    status = subprocess.run(
        [*LATTICE, "stack", "status"], capture_output=True, text=True, check=False, timeout=60
    )
    assert status.returncode == 0
    assert "kafka      running" in status.stdout


def _stack_up_with_database(url: str) -> subprocess.CompletedProcess[str]:
    """`lattice stack up` from a shell whose LATTICE_DATABASE_URL is `url`."""
    return subprocess.run(
        [*LATTICE, "stack", "up"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "LATTICE_DATABASE_URL": url},
        timeout=120,
    )


def test_stack_up_checks_that_a_database_it_did_not_create_lets_us_in(stack: Stack) -> None:
    """Given a URL other than the local stack's own (here another database on it; another
    server is treated the same), `stack up` logs in once: a refusal is one line naming
    the server, and nothing is written for the shell to source."""
    elsewhere = stack.database_url.rsplit("/", 1)[0] + "/no_such_database"
    env_file = load_settings().home / "stack.env"
    before = env_file.read_text()
    result = _stack_up_with_database(elsewhere)

    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    port = stack.database_url.rsplit(":", 1)[1].split("/")[0]
    assert f"PostgreSQL at 127.0.0.1:{port}/no_such_database (LATTICE_DATABASE_URL) refused us" in (
        result.stderr
    )
    assert env_file.read_text() == before


async def test_stack_up_from_a_shell_with_the_demos_env_records_the_stacks_own_database(
    stack: Stack,
) -> None:
    """`make stack` in a shell that sourced the demo's env: stack.env, which every later
    shell sources, keeps naming the stack's own database, not the demo's (the next
    `make demo` drops that one)."""
    demo = stack.database_url.rsplit("/", 1)[0] + "/lattice_demo"
    env_file = load_settings().home / "stack.env"
    before = env_file.read_text()
    assert "lattice_demo" not in before
    conn = await asyncpg.connect(stack.database_url)
    created = False
    try:
        created = not await conn.fetchval(
            "SELECT 1 FROM pg_database WHERE datname = 'lattice_demo'"
        )
        if created:
            await conn.execute("CREATE DATABASE lattice_demo")
        result = await asyncio.to_thread(_stack_up_with_database, demo)
        assert result.returncode == 0, result.stderr
        assert env_file.read_text() == before
    finally:
        if created:
            await conn.execute("DROP DATABASE IF EXISTS lattice_demo WITH (FORCE)")
        await conn.close()


def test_stack_up_creates_topics_of_other_names(stack: Stack) -> None:
    """`stack up --topic --usage-topic` (every setting is also a flag) on the running
    stack creates those topics. stack.env does not name them: a later `stack up` without
    the flags (`make test`, `make demo`) would name others, so the commands that use them
    are given the same LATTICE_TOPIC and LATTICE_USAGE_TOPIC."""
    events, usage = f"t{uuid.uuid4().hex[:8]}.events", f"t{uuid.uuid4().hex[:8]}.usage"
    env_file = load_settings().home / "stack.env"
    before = env_file.read_text()
    try:
        result = subprocess.run(
            [*LATTICE, "stack", "up", "--topic", events, "--usage-topic", usage],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert f"created {events}, {events}.dlq, {usage}" in result.stderr
        created = asyncio.run(_topic_names(stack.kafka_bootstrap))
        assert {events, f"{events}.dlq", usage} <= created
        assert "LATTICE_TOPIC" not in env_file.read_text()
    finally:
        env_file.write_text(before)
        asyncio.run(delete_topics(stack.kafka_bootstrap, [events, f"{events}.dlq", usage]))


async def test_a_private_broker_keeps_its_data_across_stop_and_start(tmp_path: Path) -> None:
    port = free_port(2)
    topic = f"t{uuid.uuid4().hex[:8]}.durable"
    bootstrap = f"127.0.0.1:{port}"
    try:
        assert kafka.start(share_kafka_jars(tmp_path), port=port, partitions=1, timeout=90)
        assert kafka.start(tmp_path, port=port, partitions=1, timeout=90) is False
        await ensure_topics(bootstrap, [topic], partitions=2)
        await _produce(bootstrap, topic, [(b"k1", b"v1"), (b"k2", b"v2")])
        assert kafka.stop(tmp_path) is True
        assert not kafka.is_running(tmp_path)
        assert kafka.start(tmp_path, port=port, partitions=1, timeout=90) is True
        got = await read_all(bootstrap, topic)
        assert sorted((r.key, r.value) for r in got) == [(b"k1", b"v1"), (b"k2", b"v2")]
    finally:
        kafka.stop(tmp_path)


def test_with_stack_stops_afterwards_only_what_it_started(tmp_path: Path) -> None:
    """`make test` with a broker already running (and PostgreSQL not): the broker is left
    as it was found; PostgreSQL, which the script started, is stopped. The shell has a
    managed cluster's security exported (as the README's example does): the local broker
    is still reached in plaintext, and stack.env says so to the commands run with it. And
    the shell sourced the demo's env, as the demo suggests: the tests get the stack's own
    database and topics, not the demo's (which the next demo drops)."""
    kafka_port, pg_port = free_port(2), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATTICE_")}
    env |= {
        "LATTICE_DATABASE_URL": postgres.url(pg_port).rsplit("/", 1)[0] + "/lattice_demo",
        "LATTICE_TOPIC": "demo.stripe.events",
        "LATTICE_HOME": str(tmp_path),
        "LATTICE_KAFKA_PORT": str(kafka_port),
        "LATTICE_PG_PORT": str(pg_port),
        "LATTICE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "LATTICE_KAFKA_SASL_USERNAME": "APIKEY",
        "LATTICE_KAFKA_SASL_PASSWORD": "not-for-the-local-broker",
    }
    try:
        assert kafka.start(share_kafka_jars(tmp_path), port=kafka_port, partitions=1, timeout=90)
        script = (
            'test "$LATTICE_DATABASE_URL" = "' + postgres.url(pg_port) + '" && '
            'test "$LATTICE_KAFKA_SECURITY_PROTOCOL" = PLAINTEXT && '
            'test -z "${LATTICE_TOPIC:-}" && '
            'read -r line && test "$line" = "from stdin"'  # the command still has stdin
        )
        result = subprocess.run(
            [str(REPO / "deploy" / "with-stack.sh"), "bash", "-c", script],
            env=env,
            input="from stdin\n",
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert f"postgresql {postgres.url(pg_port)} (started)" in result.stderr
        assert kafka.is_running(tmp_path), "the broker it found running was stopped"
        assert not postgres.is_running(tmp_path), "the server it started still runs"
    finally:
        postgres.stop(tmp_path)
        kafka.stop(tmp_path)


def test_with_stack_stops_its_command_and_what_it_started_on_sigterm(tmp_path: Path) -> None:
    """A SIGTERM sent to the script alone (a CI job's timeout, a supervisor) waited for
    the command to end on its own (bash runs a trap only after the foreground command):
    the tests went on, and the servers it started with them."""
    kafka_port, pg_port = free_port(2), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATTICE_")}
    env |= {
        "LATTICE_HOME": str(tmp_path),
        "LATTICE_KAFKA_PORT": str(kafka_port),
        "LATTICE_PG_PORT": str(pg_port),
    }
    pid_file = tmp_path / "command.pid"
    try:
        # The broker already runs (started quicker here): the script starts PostgreSQL.
        assert kafka.start(share_kafka_jars(tmp_path), port=kafka_port, partitions=1, timeout=90)
        script = subprocess.Popen(
            [
                str(REPO / "deploy" / "with-stack.sh"),
                "bash",
                "-c",
                f'echo $$ > "{pid_file}"; exec sleep 300',
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 180
        while not pid_file.exists() or not pid_file.read_text().strip():
            assert script.poll() is None, script.communicate()[1]
            assert time.monotonic() < deadline, "the command never started"
            time.sleep(0.2)
        command = int(pid_file.read_text())
        script.send_signal(signal.SIGTERM)
        _, err = script.communicate(timeout=60)
        assert script.returncode == 143, err
        with pytest.raises(ProcessLookupError):
            os.kill(command, 0)
        assert not postgres.is_running(tmp_path), "the server it started still runs"
        assert kafka.is_running(tmp_path), "the broker it found running was stopped"
    finally:
        postgres.stop(tmp_path)
        kafka.stop(tmp_path)


async def test_a_topic_the_broker_will_not_create_fails_provisioning(stack: Stack) -> None:
    """The broker refuses per topic (here: replication 3 on one broker) rather than failing
    the request; provisioning must not report it created."""
    name = f"rf3-{uuid.uuid4().hex[:8]}"
    with pytest.raises(StackError, match=rf"did not create {name} \(InvalidReplicationFactor"):
        await ensure_topics(stack.kafka_bootstrap, [name], partitions=1, replication_factor=3)
    assert name not in await _topic_names(stack.kafka_bootstrap)


async def test_an_existing_topic_that_would_not_keep_records_forever_is_named(
    stack: Stack,
) -> None:
    """A topic auto-created with the broker's defaults before provisioning ran deletes the
    log after a week: provisioning says so instead of skipping it."""
    name, kept = f"week-{uuid.uuid4().hex[:8]}", f"kept-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name, 1, 1, topic_configs={"retention.ms": "604800000"})]
        )
    finally:
        await admin.close()
    try:
        with pytest.raises(StackError, match=rf"{name} has retention.ms=604800000") as caught:
            await ensure_topics(stack.kafka_bootstrap, [name], partitions=1)
        # The command it gives is whole: which broker, which topic.
        assert str(caught.value).endswith(
            f"change it with kafka-configs.sh --bootstrap-server {stack.kafka_bootstrap} "
            f"--alter --entity-type topics --entity-name {name} "
            "--add-config retention.ms=-1,retention.bytes=-1"
        )
        assert await ensure_topics(stack.kafka_bootstrap, [kept], partitions=1) == [kept]
        assert await ensure_topics(stack.kafka_bootstrap, [kept], partitions=1) == []
    finally:
        await delete_topics(stack.kafka_bootstrap, [name, kept])


async def _topic_names(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def test_stack_status_asks_an_external_service_instead_of_assuming_it_runs(
    stack: Stack,
) -> None:
    nobody = free_port()
    # The same broker, named as a list: not the local address, so an external broker.
    answering = f"{stack.kafka_bootstrap},{stack.kafka_bootstrap}"
    result = subprocess.run(
        [*LATTICE, "stack", "status"],
        capture_output=True,
        text=True,
        check=False,
        env={
            **os.environ,
            "LATTICE_KAFKA_BOOTSTRAP": answering,
            # Another port than the stack's own: a server given from outside (nobody there).
            "LATTICE_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{nobody}/x",
        },
        timeout=120,
    )
    assert result.returncode == 3, result.stderr
    assert result.stdout.splitlines() == [
        "kafka      running (external)",
        "postgresql not answering (external)",
    ]


async def test_the_usage_topic_stamps_records_with_the_brokers_time(stack: Stack) -> None:
    """A record produced with a timestamp ahead (the app's clock wrong; Kafka 4 refuses
    one over an hour ahead on a topic that keeps the producer's time) comes back with the
    time the broker appended it: what the meters projection bounds a fact's time by. Other
    topics keep the producer's (the receiver's time of receipt). A usage topic made before
    with the producer's time is named in a warning, not changed."""
    usage, log = (f"{kind}-{uuid.uuid4().hex[:8]}" for kind in ("usage", "log"))
    await ensure_topics(stack.kafka_bootstrap, [usage, log], partitions=1, append_time=[usage])
    ahead = int((time.time() + 50 * 60) * 1000)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for topic in (usage, log):
            await producer.send_and_wait(topic, b"{}", key=b"cus_1", timestamp_ms=ahead)
    finally:
        await producer.stop()
    try:
        [appended] = await read_all(stack.kafka_bootstrap, usage)
        [stamped] = await read_all(stack.kafka_bootstrap, log)
        assert appended.timestamp_ms < time.time() * 1000 + 5_000
        assert stamped.timestamp_ms == ahead
        with structlog.testing.capture_logs() as logged:
            await ensure_topics(
                stack.kafka_bootstrap, [usage, log], partitions=1, append_time=[usage, log]
            )
        assert [(e["log_level"], e["topic"]) for e in logged] == [("warning", log)]
        assert "message.timestamp.type=LogAppendTime" in logged[0]["event"]
    finally:
        await delete_topics(stack.kafka_bootstrap, [usage, log])


def test_stack_down_stops_kafka_when_postgresql_will_not_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL's stop fails (pg_ctl timed out twice, say): the broker is stopped all the
    same, and the error names what could not be stopped and what was."""
    port = free_port(2)
    assert kafka.start(share_kafka_jars(tmp_path), port=port, partitions=1, timeout=90)

    def will_not_stop(home: Path) -> bool:
        raise StackError("PostgreSQL `pg_ctl` did not finish within 90 s")

    monkeypatch.setattr(postgres, "stop", will_not_stop)
    try:
        with pytest.raises(StackError) as refused:
            stack.down(Settings(home=tmp_path))
        assert not kafka.is_running(tmp_path)
    finally:
        kafka.stop(tmp_path)
    assert str(refused.value) == (
        "could not stop postgresql: PostgreSQL `pg_ctl` did not finish within 90 s (stopped: kafka)"
    )
