"""PostgreSQL SIGKILLed (postmaster and every backend) under the projectors, then
restarted: the projectors wait (never exit), resume from the positions PostgreSQL kept,
and end with tables identical to the reference run."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

import asyncpg
import orjson
import pytest
from aiokafka import TopicPartition

from projectors.base import Record
from projectors.batch import BatchApplier
from projectors.migrate import migrate
from tests.conftest import Stack
from tests.faults.conftest import Reference
from tests.faults.projecting import (
    API_KEY,
    caught_up,
    create_topics,
    differences,
    expected_positions,
    log_end_positions,
    produce_stream,
    progress,
    projector_env,
    settings_for,
    snapshot,
    stored_positions,
)
from tests.faults.services import PrivatePostgres, at_least, projector
from tests.support.audit_projection import AuditProjection, NoDeadLetters
from tests.support.projectors import extra_database, positions
from tests.support.wait import eventually

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DB_KILLS = 2


async def test_postgres_killed_under_projectors_they_resume_and_match_the_reference(
    stack: Stack,
    private_postgres: PrivatePostgres,
    unique: str,
    tmp_path: Path,
    reference: Reference,
    fault_seed: int,
    injected: Counter[str],
) -> None:
    rng = random.Random(fault_seed + 4)
    topics = await create_topics(stack.kafka_bootstrap, unique)
    await produce_stream(stack.kafka_bootstrap, topics)
    async with extra_database(private_postgres.url("postgres"), unique) as url:
        proc = projector(
            projector_env(stack.kafka_bootstrap, url, topics, unique), tmp_path / "projector.log"
        )
        settings = settings_for(stack.kafka_bootstrap, url, topics, unique)
        ends = expected_positions(settings, await log_end_positions(stack.kafka_bootstrap, topics))
        wanted = caught_up(ends)
        # Positions summed over every projector, as `progress` counts them: the kill points
        # spread over the whole run (reference.records is one projector's share).
        total = sum(sum(positions.values()) for positions in ends.values())
        points = sorted(rng.sample(range(total // 10, total * 9 // 10), DB_KILLS))
        try:
            proc.start()

            def waiting() -> None:
                # It waits for the database: no supervisor has to start it again.
                assert proc.alive(), f"the projector exited:\n{proc.output()[-3000:]}"

            async def supervised_progress() -> int:
                waiting()
                return await progress(url)

            for point in points:
                reached = await eventually(
                    supervised_progress,
                    at_least(point),
                    timeout=90,
                    interval=0.01,
                    what=f"{point} records committed",
                )
                # Else the kill would find the work done, and test nothing.
                assert reached < total, f"all {total} committed before the kill"
                await asyncio.to_thread(private_postgres.kill)
                injected["PostgreSQL SIGKILL under projectors"] += 1
                # Down for a random while (fault timing, not a wait for a condition).
                await asyncio.sleep(rng.uniform(0.5, 2.0))
                await asyncio.to_thread(private_postgres.start)

            async def positions_supervised() -> dict[str, dict[tuple[str, int], int]]:
                waiting()
                return await stored_positions(url)

            await eventually(
                positions_supervised, wanted, timeout=120, what="every projector at the log end"
            )
            diffs = differences(await snapshot(url, topics), reference.tables)
            assert not diffs, diffs
        finally:
            proc.stop()
    output = proc.output()
    assert API_KEY not in output
    # The projector met the outage, said so, and waited it out in the one process.
    assert "database unavailable; will reconnect and re-seek" in output, output[-3000:]
    assert proc.starts == 1
    # Through the outage too, the log is JSON lines only: the libraries' tracebacks
    # (asyncpg's pool logs one per failed reconnect) are each one line's `exception`.
    for line in output.splitlines():
        assert isinstance(orjson.loads(line), dict), line


async def test_a_batch_committed_just_before_postgresql_is_killed_is_kept(
    private_postgres: PrivatePostgres, unique: str, injected: Counter[str]
) -> None:
    """A commit acknowledged is on disk, rows and positions: a projector idle at the log end
    never reads its records again, so a crash must not take back what it was told was
    stored (with `synchronous_commit = off` it did: the WAL writer had not written it)."""
    audit = AuditProjection()
    async with extra_database(private_postgres.url("postgres"), unique) as url:
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn, [audit])
        finally:
            await conn.close()
        tp = TopicPartition("t", 0)
        for attempt in range(3):
            pool = await asyncpg.create_pool(url, min_size=1, max_size=1)
            applier = BatchApplier(
                audit, pool, NoDeadLetters(), schema="projections", projector_key="audit"
            )
            start = attempt * 5
            batch = {tp: [Record("t", 0, n, b"k", b"{}", {}, 0) for n in range(start, start + 5)]}
            try:
                await applier.commit(batch, {tp: start or None})
                private_postgres.kill()  # at once: within the WAL writer's 200 ms
                injected["PostgreSQL SIGKILL just after a commit"] += 1
            finally:
                pool.terminate()
            await asyncio.to_thread(private_postgres.start)
            assert await positions(url, "audit") == {0: start + 5}, f"attempt {attempt}"
