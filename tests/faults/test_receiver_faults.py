"""The receiver process SIGKILLed mid-request, again and again, under load.

Invariant: no 200 without its record on the log, and no half-written record (every record
is a body that was sent, byte for byte). Requests cut off by the kill see a dropped
connection and are delivered again, as Stripe would, until every event is accepted.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from pathlib import Path

import pytest

from deploy.settings import Settings
from tests.faults.loadgen import LoadGenerator
from tests.faults.receiving import (
    SECRETS,
    assert_every_200_is_logged,
    assert_no_secret_in,
    event_deliveries,
    running_receiver,
)
from tests.faults.services import at_least
from tests.support.wait import eventually

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KILLS = int(os.environ.get("LATTICE_RECEIVER_KILLS", "4"))


async def test_receiver_killed_mid_request_never_answers_200_without_a_record(
    settings: Settings,
    tmp_path: Path,
    fault_seed: int,
    injected: Counter[str],
    observed: Counter[str],
) -> None:
    rng = random.Random(fault_seed + 1)
    sent = event_deliveries(1500, seed=fault_seed + 1)
    log = tmp_path / "receiver.log"
    async with running_receiver(settings.kafka_bootstrap, settings.topic, log) as rx:
        load = LoadGenerator(rx.base_url, SECRETS, concurrency=32, rate=300)
        delivering = asyncio.create_task(load.run(sent, deadline=150))
        # Kill points spread over the run, each at a random number of accepted deliveries.
        points = sorted(rng.sample(range(100, len(sent) - 100), KILLS))
        for point in points:
            await eventually(
                lambda: _value(load.report.accepted.total()),
                at_least(point),
                timeout=60,
                what=f"{point} deliveries accepted",
            )
            rx.service.kill()
            injected["receiver SIGKILL mid-request"] += 1
            await rx.restart()
        report = await delivering
    observed["receiver SIGKILL: requests cut off mid-way"] += report.cut_off
    observed["receiver SIGKILL: connections refused while restarting"] += (
        report.connection_errors - report.cut_off
    )
    observed["receiver SIGKILL: deliveries accepted"] += len(report.accepted)
    assert report.refused == []
    assert report.cut_off > 0, "no request was cut off mid-way: the kills missed the load"
    assert set(report.accepted) == {d.event_id for d in sent}
    await assert_every_200_is_logged(settings.kafka_bootstrap, settings.topic, sent, report)
    assert_no_secret_in(log.read_text(errors="replace"))


async def _value(n: int) -> int:
    return n
