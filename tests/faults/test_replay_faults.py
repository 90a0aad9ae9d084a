"""`lattice replay` under faults, beside a live `lattice project`: replays SIGKILLed at
random points of their rebuild (and swap), and PostgreSQL SIGKILLed under a replay. A
replay run to its end afterwards swaps in tables identical to the reference run, and
leaves no shadow schema and no positions of its own behind; a killed replay never changes
the live tables.

`LATTICE_REPLAY_KILLS` (default 6) sets the replays killed.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from projectors import catalog
from tests.conftest import Stack
from tests.faults.conftest import Reference
from tests.faults.projecting import (
    API_KEY,
    caught_up,
    create_topics,
    expected_positions,
    finish_and_compare,
    log_end_positions,
    produce_stream,
    projector_env,
    settings_for,
    stored_positions,
)
from tests.faults.services import PrivatePostgres, Service, projector
from tests.support.projectors import extra_database, rows
from tests.support.wait import eventually

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KILLS = int(os.environ.get("LATTICE_REPLAY_KILLS", "6"))
NAMES = sorted(catalog.discover())


def replayer(env: dict[str, str], log: Path, name: str) -> Service:
    """`lattice replay NAME --from-beginning` as a child process."""
    argv = [sys.executable, "-m", "deploy.cli", "replay", name, "--from-beginning"]
    return Service(f"replay:{name}", argv, env, log)


async def replay_to_the_end(env: dict[str, str], log: Path, name: str) -> None:
    """Run a replay until it swapped in. A replay just killed may still hold its lock for
    a moment (until PostgreSQL sees its connection gone): that refusal is tried again."""
    for _ in range(20):
        proc = replayer(env, log, name)
        proc.start()
        assert proc.proc is not None
        code = await asyncio.to_thread(proc.proc.wait, 300)
        if code == 0:
            return
        assert f"a replay of {name} is already running" in proc.output(), proc.output()[-3000:]
        await asyncio.sleep(0.5)
    raise AssertionError(f"the replay of {name} never got its lock:\n{proc.output()[-3000:]}")


async def _no_replay_left(url: str) -> None:
    assert await rows(url, "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'replay\\_%'") == []
    assert (
        await rows(url, "SELECT projector FROM lattice.offsets WHERE projector LIKE '%.replay'")
        == []
    )


def _alive(live: Service) -> Callable[[], None]:
    def check() -> None:
        assert live.alive(), f"the live projector died:\n{live.output()[-3000:]}"

    return check


async def _rebuilding(url: str, name: str) -> bool:
    """Whether a replay of `name` has stored positions (none before any process created
    lattice.offsets in this test's new database)."""
    if await rows(url, "SELECT 1 WHERE to_regclass('lattice.offsets') IS NULL"):
        return False
    found = await rows(url, f"SELECT 1 FROM lattice.offsets WHERE projector = '{name}.replay'")
    return bool(found)


async def test_replays_killed_at_random_points_never_change_the_live_tables(
    stack: Stack,
    database_url: str,
    unique: str,
    tmp_path: Path,
    reference: Reference,
    fault_seed: int,
    injected: Counter[str],
) -> None:
    rng = random.Random(fault_seed + 5)
    topics = await create_topics(stack.kafka_bootstrap, unique)
    await produce_stream(stack.kafka_bootstrap, topics, 0, 2)
    env = projector_env(stack.kafka_bootstrap, database_url, topics, unique)
    live = projector(env, tmp_path / "projector.log")
    live.start()
    try:
        for n in range(KILLS):
            if n == KILLS // 2:  # the log grows under the replays
                await produce_stream(stack.kafka_bootstrap, topics, 1, 2)
            name = rng.choice(NAMES)
            proc = replayer(env, tmp_path / f"replay{n}.log", name)
            proc.start()
            # Fault timing, not a wait for a condition: anywhere in start-up, rebuild, swap.
            await asyncio.sleep(rng.uniform(0.3, 3.0))
            if proc.alive():
                try:
                    rebuilding = await _rebuilding(database_url, name)
                finally:
                    proc.kill(signal.SIGKILL)
                injected["replay SIGKILL at a random point"] += 1
                if rebuilding:
                    injected["replay SIGKILL mid-rebuild (its positions stored)"] += 1
            else:  # it finished first, or found the last one's lock still held
                assert proc.proc is not None
                assert proc.proc.returncode in (0, 1), proc.output()[-3000:]
                injected[f"replay ended before its kill (exit {proc.proc.returncode})"] += 1
            assert live.alive(), f"the live projector died:\n{live.output()[-3000:]}"
            if n >= KILLS // 2:
                # The whole log is written: the live tables must be the reference's after
                # each kill (a replay that ended first and swapped would rebuild them whole,
                # hiding what an earlier kill did; each kill is judged on its own).
                await finish_and_compare(
                    stack.kafka_bootstrap,
                    database_url,
                    unique,
                    unique,
                    reference.tables,
                    _alive(live),
                )
        assert injected["replay SIGKILL at a random point"] >= 1, "no replay was killed"
        for name in NAMES:
            await replay_to_the_end(env, tmp_path / f"replay-{name}.log", name)
        await _no_replay_left(database_url)
        await finish_and_compare(
            stack.kafka_bootstrap, database_url, unique, unique, reference.tables, _alive(live)
        )
    finally:
        live.stop()
    assert API_KEY not in live.output()


async def test_postgresql_killed_under_a_replay_it_waits_and_swaps_in(
    stack: Stack,
    private_postgres: PrivatePostgres,
    unique: str,
    tmp_path: Path,
    reference: Reference,
    fault_seed: int,
    injected: Counter[str],
) -> None:
    rng = random.Random(fault_seed + 6)
    topics = await create_topics(stack.kafka_bootstrap, unique)
    await produce_stream(stack.kafka_bootstrap, topics)
    async with extra_database(private_postgres.url("postgres"), unique) as url:
        env = projector_env(stack.kafka_bootstrap, url, topics, unique)
        live = projector(env, tmp_path / "projector.log")
        live.start()
        try:
            settings = settings_for(stack.kafka_bootstrap, url, topics, unique)
            ends = expected_positions(
                settings, await log_end_positions(stack.kafka_bootstrap, topics)
            )
            await eventually(
                lambda: stored_positions(url), caught_up(ends), timeout=120, what="live caught up"
            )
            name = "meters"  # reads two topics and hydrates thin events
            proc = replayer(env, tmp_path / "replay.log", name)
            proc.start()
            # Into its rebuild: it stored positions of its own (start-up is over).
            await eventually(
                lambda: rows(
                    url, "SELECT 1 FROM lattice.offsets WHERE projector = 'meters.replay'"
                ),
                bool,
                timeout=60,
                interval=0.01,
                what="the replay rebuilding",
            )
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            assert proc.alive(), f"the replay ended before the fault:\n{proc.output()[-3000:]}"
            await asyncio.to_thread(private_postgres.kill)
            injected["PostgreSQL SIGKILL under a replay"] += 1
            await asyncio.sleep(rng.uniform(0.5, 2.0))
            await asyncio.to_thread(private_postgres.start)
            assert proc.proc is not None
            code = await asyncio.to_thread(proc.proc.wait, 300)
            assert code == 0, proc.output()[-3000:]
            assert "replay swapped in" in proc.output()
            # The live projector waited the outage out too, in the same process.
            assert live.alive(), live.output()[-3000:]
            assert live.starts == 1, live.output()[-3000:]
            await _no_replay_left(url)
            await finish_and_compare(
                stack.kafka_bootstrap, url, unique, unique, reference.tables, _alive(live)
            )
        finally:
            live.stop()
