"""`lattice simulate --wait/--check`: a long wait for the projectors says how it goes."""

from __future__ import annotations

import pytest

from deploy.settings import Settings
from ingest.simulate import report
from projectors import catalog
from tests.conftest import Stack
from tests.support.stripe_stream import produce, records, stream

pytestmark = pytest.mark.integration


async def test_waiting_for_projectors_that_do_not_run_says_how_far_behind(
    settings: Settings,
    stack: Stack,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No projector runs (the usual mistake): the wait ends at its timeout, and meanwhile
    says which projectors are how far behind rather than nothing for two minutes."""
    await produce(stack.kafka_bootstrap, settings.topic, records(stream(5, seed=3)))
    monkeypatch.setattr(report, "SAY_EVERY_S", 0.2)

    lag, dead = await report.wait_caught_up(settings, timeout=5)

    # Every projection reads the events topic; none has applied anything.
    assert (lag, dead) == (5 * len(catalog.select([])), 0)
    said = [line for line in capsys.readouterr().err.splitlines() if line]
    assert said, "nothing said while waiting"
    assert all(line.startswith("waiting for the projectors: ") for line in said), said
    assert "events 5" in said[0]
    assert said[0].endswith("s left")
