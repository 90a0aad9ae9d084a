"""The broker SIGKILLed under the projectors, then restarted: they ride out the outage (no
process exits), resume from the positions PostgreSQL kept, and end with tables identical
to the reference run, every position at the log end."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

import pytest

from deploy.stack.topics import delete_topics
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
from tests.faults.services import PrivateKafka, Service, at_least, projector
from tests.support.wait import eventually

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BROKER_KILLS = 2


async def test_broker_killed_under_projectors_they_resume_and_match_the_reference(
    live_kafka: PrivateKafka,
    database_url: str,
    unique: str,
    tmp_path: Path,
    reference: Reference,
    fault_seed: int,
    injected: Counter[str],
) -> None:
    rng = random.Random(fault_seed + 5)
    bootstrap = live_kafka.bootstrap
    topics = await create_topics(bootstrap, unique)
    await produce_stream(bootstrap, topics)
    settings = settings_for(bootstrap, database_url, topics, unique)
    wanted = expected_positions(settings, await log_end_positions(bootstrap, topics))
    total = sum(sum(positions.values()) for positions in wanted.values())
    proc = projector(projector_env(bootstrap, database_url, topics, unique), tmp_path / "p.log")
    points = sorted(rng.sample(range(total // 10, total * 8 // 10), BROKER_KILLS))

    async def committed() -> int:
        assert proc.alive(), f"the projector died on its own:\n{_tail(proc)}"
        return await progress(database_url)

    try:
        proc.start()
        for point in points:
            reached = await eventually(
                committed, at_least(point), timeout=90, interval=0.01, what=f"{point} committed"
            )
            # Else the kill would find the work done, and test nothing.
            assert reached < total, f"all {total} committed before the kill"
            await asyncio.to_thread(live_kafka.kill)
            injected["broker SIGKILL under projectors"] += 1
            # Down for a random while (fault timing, not a wait for a condition).
            await asyncio.sleep(rng.uniform(1.0, 4.0))
            assert proc.alive(), f"the projector gave up while the broker was down:\n{_tail(proc)}"
            await asyncio.to_thread(live_kafka.start)
        await eventually(
            lambda: stored_positions(database_url),
            caught_up(wanted),
            timeout=120,
            what="every projector at the log end",
        )
        assert proc.alive(), _tail(proc)
        diffs = differences(await snapshot(database_url, topics), reference.tables)
        assert not diffs, "\n".join(f"{table}: {diff}" for table, diff in diffs.items())
    finally:
        proc.stop()
        await delete_topics(bootstrap, [topics.events, topics.dlq, topics.usage])
    output = proc.output()
    assert API_KEY not in output
    # aiokafka logs each failed retry (about a thousand lines a second with the broker
    # down); repeats are written once per 10 s each, with a count of those left out.
    library = [line for line in output.splitlines() if '"logger":"aiokafka' in line]
    assert len(library) < 300, f"{len(library)} aiokafka lines"


async def test_sigterm_with_the_broker_down_stops_every_projector_cleanly(
    live_kafka: PrivateKafka,
    database_url: str,
    unique: str,
    tmp_path: Path,
    injected: Counter[str],
) -> None:
    """An operator stopping the projectors during a broker outage (a node drained for the
    same maintenance): each one leaves as on any SIGTERM, status 0 and no traceback; the
    fetches aiokafka is retrying must not turn the stop into a crash."""
    bootstrap = live_kafka.bootstrap
    topics = await create_topics(bootstrap, unique)
    await produce_stream(bootstrap, topics)
    settings = settings_for(bootstrap, database_url, topics, unique)
    wanted = expected_positions(settings, await log_end_positions(bootstrap, topics))
    proc = projector(projector_env(bootstrap, database_url, topics, unique), tmp_path / "p.log")
    try:
        proc.start()
        await eventually(
            lambda: stored_positions(database_url),
            caught_up(wanted),
            timeout=120,
            what="every projector at the log end",
        )
        await asyncio.to_thread(live_kafka.kill)
        injected["broker SIGKILL, then SIGTERM to the projectors"] += 1
        await asyncio.sleep(3)  # the fetches now fail and back off (fault timing)
        assert proc.alive(), _tail(proc)
        await asyncio.to_thread(proc.stop)
    finally:
        proc.stop()
        await asyncio.to_thread(live_kafka.start)
        await delete_topics(bootstrap, [topics.events, topics.dlq, topics.usage])
    output = proc.output()
    assert proc.exits == [0], _tail(proc)
    assert "Traceback" not in output, _tail(proc)
    stopped = {
        line.split('"projector":"')[1].split('"')[0]
        for line in output.splitlines()
        if '"event":"projector stopped"' in line
    }
    assert stopped == set(wanted), _tail(proc)


def _tail(proc: Service) -> str:
    return proc.output()[-3000:]
