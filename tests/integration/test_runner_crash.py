"""Projector processes killed and stopped under load: nothing lost, nothing applied twice.

`LATTICE_CRASH_KILLS` (default 5) sets how many SIGKILLs the crash test deals out;
`LATTICE_CRASH_SEED` replays one run's kill timings.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson
import pytest

from deploy.settings import Settings
from ingest.record import LogRecord
from projectors.events import projection as events
from tests.conftest import Stack
from tests.support.audit_projection import assert_each_applied_once
from tests.support.projectors import (
    EVENTS_TABLE,
    extra_database,
    log_ends,
    positions,
    rows,
    running,
    spawn,
)
from tests.support.stripe_stream import produce, records, stream
from tests.support.wait import eventually

pytestmark = pytest.mark.integration

KILLS = int(os.environ.get("LATTICE_CRASH_KILLS", "5"))
CHUNK = 1000  # ~50 batches: the kill lands while some are left
SMALL_BATCHES = {"LATTICE_PROJECTOR_BATCH_SIZE": "20", "LATTICE_PROJECTOR_BATCH_WAIT_MS": "20"}


async def _caught_up(url: str, bootstrap: str, topic: str, names: Sequence[str]) -> None:
    ends = await log_ends(bootstrap, topic)
    for name in names:

        async def probe(name: str = name) -> dict[int, int]:
            return await positions(url, name)

        await eventually(
            probe, lambda p: p == ends, timeout=60, what=f"{name} at the log end {ends}"
        )


def _advanced_past(before: int) -> Callable[[dict[int, int]], bool]:
    return lambda stored: sum(stored.values()) > before


def _stop(proc: subprocess.Popen[bytes], sig: int) -> int:
    proc.send_signal(sig)
    return proc.wait(timeout=30)


async def test_sigkill_at_random_points_ends_like_one_clean_pass(
    settings: Settings, stack: Stack, tmp_path: Path, unique: str
) -> None:
    seed = int(os.environ.get("LATTICE_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    log = tmp_path / "projector.log"
    url = settings.require_database_url()
    all_records = records(stream(CHUNK * (KILLS + 1), seed=seed))
    chunks = [all_records[i : i + CHUNK] for i in range(0, len(all_records), CHUNK)]
    mid_work = 0  # kills that left records of their chunk to apply
    for kill, chunk in enumerate(chunks[:-1]):
        await produce(stack.kafka_bootstrap, settings.topic, chunk)
        before = sum((await positions(url, "events")).values())
        # A fresh group per life: a SIGKILLed member would otherwise hold its partitions
        # until its session times out. Positions come from PostgreSQL either way.
        proc = spawn(settings, log, LATTICE_GROUP_PREFIX=f"{unique}-{kill}", **SMALL_BATCHES)
        try:
            # The kill lands at a random point of the chunk (mid-apply, between apply and
            # commit, mid-fetch), polled closely: a chunk takes ~150 ms to apply.
            await eventually(
                lambda: positions(url, "events"),
                _advanced_past(before + rng.randrange(CHUNK // 2)),
                timeout=60,
                interval=0.005,
                what=f"life {kill} applying records (seed {seed})",
            )
        finally:
            _stop(proc, signal.SIGKILL)
        mid_work += sum((await positions(url, "events")).values()) < (kill + 1) * CHUNK
    # Otherwise every process may have died idle, its work done: nothing was tested.
    assert mid_work >= 1, f"no kill landed with records left to apply (seed {seed})"
    await produce(stack.kafka_bootstrap, settings.topic, chunks[-1])
    proc = spawn(settings, log, LATTICE_GROUP_PREFIX=f"{unique}-last")
    try:
        await _caught_up(url, stack.kafka_bootstrap, settings.topic, ["events", "audit"])
    finally:
        assert _stop(proc, signal.SIGTERM) == 0, log.read_text()[-3000:]

    await assert_each_applied_once(url, len(all_records))
    async with extra_database(stack.database_url, f"{unique}_clean") as clean_url:
        clean = settings.model_copy(update={"database_url": clean_url, "group_prefix": unique})
        async with running(clean, [events]):
            await _caught_up(clean_url, stack.kafka_bootstrap, settings.topic, ["events"])
        expected = await rows(clean_url, EVENTS_TABLE)
    assert await rows(url, EVENTS_TABLE) == expected, f"seed {seed}"


def _batches_in(log: Path) -> int:
    batches = 0
    for line in log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            batches += orjson.loads(line).get("event") == "batch"
    return batches


async def test_two_processes_share_partitions_and_one_stopping_loses_nothing(
    settings: Settings, stack: Stack, tmp_path: Path, unique: str
) -> None:
    url = settings.require_database_url()
    pending: list[LogRecord] = records(stream(4000, seed=5))
    produced = 0
    logs = tmp_path / "a.log", tmp_path / "b.log"
    first, second = (
        spawn(settings, path, LATTICE_GROUP_PREFIX=unique, **SMALL_BATCHES) for path in logs
    )

    async def feed_until_both_apply() -> bool:
        nonlocal produced
        chunk = pending[produced : produced + 100]
        await produce(stack.kafka_bootstrap, settings.topic, chunk)
        produced += len(chunk)
        return all(_batches_in(path) > 0 for path in logs)

    try:
        await eventually(
            feed_until_both_apply, timeout=60, interval=0.2, what="both processes applying batches"
        )
        # One stops mid-stream; its partitions move to the other.
        await produce(stack.kafka_bootstrap, settings.topic, pending[produced : produced + 500])
        produced += 500
        assert _stop(first, signal.SIGTERM) == 0, logs[0].read_text()[-3000:]
        await produce(stack.kafka_bootstrap, settings.topic, pending[produced : produced + 500])
        produced += 500
        await _caught_up(url, stack.kafka_bootstrap, settings.topic, ["events", "audit"])
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                _stop(proc, signal.SIGTERM)
    await assert_each_applied_once(url, produced)
    ids = {r[0] for r in await rows(url, "SELECT id FROM projections.events")}
    assert len(ids) == len({r.headers[0][1] for r in pending[:produced]})
