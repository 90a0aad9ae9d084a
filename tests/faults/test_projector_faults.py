"""Projector processes killed at random points, and a rebalance storm of three processes
per projector: the tables end row for row as one clean pass leaves them (no event lost,
none applied twice — the Connect ledger and the meter sums would double), and every
projector's stored positions stand at the log end.

`LATTICE_FAULT_KILLS` (default 50) sets the kills; a nightly run sets 500 or more.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import Stack
from tests.faults.conftest import Reference
from tests.faults.projecting import (
    API_KEY,
    create_topics,
    expected_positions,
    finish_and_compare,
    log_end_positions,
    produce_stream,
    progress,
    projector_env,
    settings_for,
)
from tests.faults.services import Service, at_least, projector
from tests.support.wait import eventually

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KILLS = int(os.environ.get("LATTICE_FAULT_KILLS", "50"))
STORM_STEPS = int(os.environ.get("LATTICE_STORM_STEPS", "24"))


async def progress_of(proc: Service, url: str) -> int:
    """Records committed so far; fails at once if the projector died by itself."""
    assert proc.alive(), f"the projector died on its own:\n{proc.output()[-3000:]}"
    return await progress(url)


def _died(procs: Service | list[Service]) -> str:
    """What the storm's processes last wrote, for a process that ended by itself."""
    procs = procs if isinstance(procs, list) else [procs]
    return "\n".join(f"{p.name} (exits {p.exits}):\n{p.output()[-3000:]}" for p in procs)


async def test_projector_killed_at_random_points_ends_like_the_reference(
    stack: Stack,
    database_url: str,
    unique: str,
    tmp_path: Path,
    reference: Reference,
    fault_seed: int,
    injected: Counter[str],
) -> None:
    rng = random.Random(fault_seed + 2)
    topics = await create_topics(stack.kafka_bootstrap, unique)
    await produce_stream(stack.kafka_bootstrap, topics)
    env = projector_env(stack.kafka_bootstrap, database_url, topics, unique)
    proc = projector(env, tmp_path / "projector.log")
    # Kill points: numbers of records committed by all projectors together, seeded, spread
    # over the first nine tenths of the run. Past that, a restarted process may commit the
    # few records left before the test sees it commit anything and kills it: a kill at the
    # log end, which proves little (one run had 7 of 50 there with the whole run to pick
    # from). Where every projector stands at the end is checked after the kills.
    settings = settings_for(stack.kafka_bootstrap, database_url, topics, unique)
    wanted = expected_positions(settings, await log_end_positions(stack.kafka_bootstrap, topics))
    total = sum(sum(positions.values()) for positions in wanted.values())
    span = max(2, total * 9 // 10)
    points = sorted(rng.sample(range(1, span), min(KILLS, span - 1)))
    mid_kills = 0
    try:
        proc.start()
        for point in points:
            # Every process is killed only once it committed something of its own (when a
            # process ran past the next points, that one ends it sooner): a kill during
            # start-up alone proves little. At the log end there is nothing left to commit.
            goal = min(max(point, await progress(database_url) + 1), total)
            await eventually(
                lambda: progress_of(proc, database_url),
                at_least(goal),
                timeout=90,
                interval=0.01,
                what=f"{goal} records committed",
            )
            mid_work = await progress(database_url) < total
            proc.kill(signal.SIGKILL)
            injected["projector SIGKILL at a random point"] += 1
            mid_kills += mid_work
            proc.start()
        injected["projector SIGKILL: of those, with records left to commit"] += mid_kills
        # Kills at the log end, with nothing left to commit, prove little.
        assert mid_kills >= len(points) * 9 // 10, f"{mid_kills} of {len(points)} mid-work"
        await finish_and_compare(
            stack.kafka_bootstrap, database_url, unique, unique, reference.tables
        )
    finally:
        await asyncio.to_thread(proc.stop)  # this loop serves the fake Stripe API meanwhile
    assert API_KEY not in proc.output()


async def test_rebalance_storm_applies_no_event_twice(
    stack: Stack,
    database_url: str,
    unique: str,
    tmp_path: Path,
    reference: Reference,
    fault_seed: int,
    injected: Counter[str],
) -> None:
    rng = random.Random(fault_seed + 3)
    topics = await create_topics(stack.kafka_bootstrap, unique)
    env = projector_env(stack.kafka_bootstrap, database_url, topics, unique)
    procs: list[Service] = [projector(env, tmp_path / f"projector{n}.log") for n in range(3)]
    parts = 4

    async def storm_step() -> None:
        proc = rng.choice(procs)
        if proc.alive():
            how = rng.choice([signal.SIGTERM, signal.SIGKILL])
            # In a thread: this loop serves the fake Stripe API, which a meters projector
            # stopping mid-fetch waits for (a blocking wait here deadlocked for 60 s).
            await asyncio.to_thread(proc.kill, how)
            injected[f"rebalance storm: {signal.Signals(how).name}"] += 1
            if how == signal.SIGTERM:
                # A clean stop (or, before its handlers are installed, Python's default).
                assert proc.exits[-1] in (0, -signal.SIGTERM), _died(proc)
        else:
            proc.start()
            injected["rebalance storm: start"] += 1
        await asyncio.sleep(rng.uniform(0.2, 1.2))
        assert not any(p.died_on_its_own() for p in procs), _died(procs)

    try:
        for proc in procs:
            proc.start()
        for step in range(STORM_STEPS):
            if step % (STORM_STEPS // parts) == 0 and step // (STORM_STEPS // parts) < parts:
                # The log keeps growing through the storm, so there is work to fight over.
                await produce_stream(
                    stack.kafka_bootstrap, topics, step // (STORM_STEPS // parts), parts
                )
            await storm_step()
        settings = settings_for(stack.kafka_bootstrap, database_url, topics, unique)
        ends = expected_positions(settings, await log_end_positions(stack.kafka_bootstrap, topics))
        total = sum(sum(positions.values()) for positions in ends.values())
        # The storm fights over real work: a group that only rebalanced would leave it all
        # to the calm catch-up below, which the random-kill test covers already. A slow
        # machine gets a longer storm (bounded) rather than a failure.
        steps = STORM_STEPS
        while (during := await progress(database_url)) < total // 2:
            assert steps < 8 * STORM_STEPS, f"{during} of {total} committed in {steps} steps"
            await storm_step()
            steps += 1
        injected["rebalance storm: % of the records committed during the storm"] += (
            100 * during // total
        )
        for proc in procs:
            if not proc.alive():
                proc.start()
        await finish_and_compare(
            stack.kafka_bootstrap, database_url, unique, unique, reference.tables
        )
        assert not any(p.died_on_its_own() for p in procs), _died(procs)
    finally:
        for proc in procs:
            await asyncio.to_thread(proc.stop)
    assert all(API_KEY not in proc.output() for proc in procs)
