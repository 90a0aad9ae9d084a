"""Fault-suite fixtures: a private broker and a private PostgreSQL (started once per session,
only when a scenario asks), the seed of the run, and a count of injected faults.

`LATTICE_FAULT_SEED` replays a run's random schedule; `LATTICE_FAULT_KILLS` sets how many
times the projector-kill scenario kills (small by default; a nightly run sets 50 or more).
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.faults.services import (
    PrivateKafka,
    PrivatePostgres,
    start_private_kafka,
    start_private_postgres,
)

SEED = int(os.environ.get("LATTICE_FAULT_SEED", str(random.randrange(1 << 30))))
_injected: Counter[str] = Counter()


@pytest.fixture(scope="session")
def fault_seed() -> int:
    """The seed every random fault schedule of this run derives from."""
    return SEED


@pytest.fixture(scope="session")
def injected() -> Counter[str]:
    """The run's count of injected faults, by kind."""
    return _injected


@pytest.fixture(scope="session")
def private_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateKafka]:
    """A broker this session may kill (never the shared one on 9092)."""
    broker = start_private_kafka(tmp_path_factory.mktemp("kafka"))
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def live_kafka(private_kafka: PrivateKafka) -> PrivateKafka:
    """The private broker, running (a scenario before may have left it down)."""
    private_kafka.start()
    return private_kafka


@pytest.fixture(scope="session")
def private_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivatePostgres]:
    """A PostgreSQL server this session may kill (never the shared one on 55432)."""
    server = start_private_postgres(tmp_path_factory.mktemp("pg"))
    try:
        yield server
    finally:
        server.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the faults injected by this run and the seed that replays them."""
    if not _injected:
        return
    terminalreporter.section("faults injected")
    for kind, count in sorted(_injected.items()):
        terminalreporter.write_line(f"{count:>6}  {kind}")
    terminalreporter.write_line(f"seed: LATTICE_FAULT_SEED={SEED}")
