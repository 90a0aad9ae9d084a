"""Connect end to end: receiver-format records on a real Kafka topic, shuffled and
duplicated, consumed by the real projector runtime into PostgreSQL."""

from __future__ import annotations

import asyncio
import random
import signal
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from deploy.settings import Settings
from ingest.record import LogRecord
from projectors.connect import projection
from projectors.connect.fold import fold, ledger
from projectors.replay import replay
from projectors.replay_start import StartAt
from projectors.service import dead_letter_producer
from tests.conftest import Stack
from tests.fixtures import connect_streams as streams
from tests.fixtures.records import as_record, log_record
from tests.integration.test_runner_cli import _run, _start
from tests.support.projectors import log_ends, positions, rows, running
from tests.support.wait import eventually

pytestmark = pytest.mark.integration

LEDGER = "SELECT * FROM projections.connect_ledger ORDER BY kind, source_id"
BALANCES = """
SELECT account, currency, transferred, reversed, application_fees, refunded_fees, paid_out, net
FROM projections.connect_balances
"""


async def append(settings: Settings, logged: Sequence[LogRecord]) -> None:
    """The records on this test's topic, as the receiver appends them."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for rec in logged:
            await producer.send_and_wait(
                settings.topic,
                rec.value,
                key=rec.key,
                headers=rec.headers,
                timestamp_ms=rec.timestamp_ms,
            )
    finally:
        await producer.stop()


async def test_a_shuffled_duplicated_log_projects_to_the_expected_balances(
    settings: Settings, unique: str
) -> None:
    stream = streams.everything()
    rng = random.Random(8)
    deliveries = stream.events + rng.sample(stream.events, k=len(stream.events) // 2)
    rng.shuffle(deliveries)
    # Connect events arrive on the `connect` endpoint; the receiver sets stripe-account.
    logged = [
        log_record(evt, endpoint="connect" if "account" in evt else "platform")
        for evt in deliveries
    ]
    await append(settings, logged)
    # This test's own consumer group, so no other test's consumers join its rebalances.
    isolated = settings.model_copy(update={"group_prefix": unique})
    expected_entries = ledger(
        fold(c for r in map(as_record, stream.events) for c in projection.reduce(r))
    )

    conn = await asyncpg.connect(settings.require_database_url())
    try:

        async def balances() -> dict[tuple[str, str], tuple[int, ...]]:
            try:
                rows = await conn.fetch(BALANCES)
            except asyncpg.UndefinedTableError:
                return {}
            return {(r[0], r[1]): tuple(r[2:]) for r in rows}

        async with running(isolated, [projection]):
            await eventually(
                balances,
                lambda got: got == stream.expected,
                timeout=60,
                what="connect_balances equal to the scenarios' balances",
            )
        positions = await conn.fetchval(
            "SELECT sum(next_offset) FROM lattice.offsets WHERE projector = 'connect'"
        )
        assert positions == len(logged)
        ledger_rows = await conn.fetch(LEDGER)
        # Row for row what the pure model of the projection (reduce, then fold) books for
        # the stream: SQL and Python agree on every movement, not only on their count.
        assert {
            (r["kind"], r["source_id"]): (r["account"], r["currency"], r["amount"])
            for r in ledger_rows
        } == {key: (e.account, e.currency, e.amount) for key, e in expected_entries.items()}
        assert len(ledger_rows) == len(expected_entries)

        # `lattice replay connect --from-beginning`: the rebuilt tables and the views over
        # them are swapped in, and they hold exactly what the live run built.
        async with dead_letter_producer(isolated) as dead_letters:
            result = await replay(isolated, projection, StartAt(from_beginning=True), dead_letters)
        assert result.records == len(logged)
        assert await conn.fetch(LEDGER) == ledger_rows
        assert await balances() == stream.expected
    finally:
        await conn.close()


async def test_the_platform_account_given_to_project_and_replay_tells_debits_apart(
    settings: Settings, stack: Stack, unique: str, tmp_path: Path
) -> None:
    """A connected account that runs a platform of its own: with `--platform-account` (or
    LATTICE_PLATFORM_ACCOUNT) only its transfer to us is a debit; unset, its transfer to
    its own connected account is booked as one too; a replay given it books as live."""
    stream = streams.account_runs_its_own_platform()
    ids = stream.ids
    await append(settings, [log_record(evt, endpoint="connect") for evt in stream.events])
    url = settings.require_database_url()

    async def balances() -> dict[tuple[str, str], tuple[int, ...]]:
        return {(r[0], r[1]): tuple(r[2:]) for r in await rows(url, BALANCES)}

    log = tmp_path / "project.log"
    proc = _start(
        settings, unique, log, "project", "connect", "--platform-account", ids["platform"]
    )
    try:
        ends = await log_ends(stack.kafka_bootstrap, settings.topic)
        written = {partition: end for partition, end in ends.items() if end}  # 4 records
        await eventually(lambda: positions(url, "connect"), lambda p: p == written, timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
    assert code == 0, log.read_text()[-2000:]
    assert await balances() == stream.expected
    transfers = {r[0] for r in await rows(url, "SELECT id FROM projections.transfers")}
    assert len(transfers) == 2  # the funding and the debit
    assert ids["onward"] not in transfers
    assert await rows(url, "SELECT id FROM projections.application_fees") == []

    unset = await _run(settings, unique, "replay", "connect")
    assert unset.returncode == 0, unset.stderr
    net = (await balances())[(ids["account"], "usd")][-1]
    assert net == 10_000 - 1_000 - 4_000  # the onward transfer taken for a debit

    given = await _run(
        settings, unique, "replay", "connect", LATTICE_PLATFORM_ACCOUNT=ids["platform"]
    )
    assert given.returncode == 0, given.stderr
    assert await balances() == stream.expected
