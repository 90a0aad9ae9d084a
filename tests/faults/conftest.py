"""Fault-suite fixtures: a private broker and a private PostgreSQL (started once per session,
only when a scenario asks), the seed of the run, and a count of injected faults.

`LATTICE_FAULT_SEED` replays a run's random schedule; `LATTICE_FAULT_KILLS` sets how many
times the projector-kill scenario kills (50 by default; a nightly run sets 500 or more).
"""

from __future__ import annotations

import os
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from deploy.stack.topics import delete_topics
from projectors.catalog import discover
from projectors.stripe_api.hydrate import open_hydrator
from tests.conftest import Stack
from tests.faults.projecting import (
    API_KEY,
    POISON,
    STRIPE_API,
    Topics,
    caught_up,
    create_topics,
    expected_positions,
    log_end_positions,
    produce_stream,
    settings_for,
    snapshot,
    stored_positions,
    thin_event_bodies,
)
from tests.faults.services import (
    STARTED,
    PrivateKafka,
    PrivatePostgres,
    start_private_kafka,
    start_private_postgres,
)
from tests.support.fake_stripe import FakeStripe, serve
from tests.support.homes import server_home
from tests.support.kafka import read_all
from tests.support.projectors import extra_database, running
from tests.support.tallies import note, tally
from tests.support.wait import eventually

# tests/conftest.py sets it for the whole run when not given, before any worker starts.
SEED = int(os.environ.get("LATTICE_FAULT_SEED", str(random.randrange(1 << 30))))
_injected = tally("faults injected")
_observed = tally("faults injected: what the run observed meanwhile")
note("faults injected", f"seed: LATTICE_FAULT_SEED={SEED}")


@pytest.fixture(autouse=True)
def no_service_outlives_its_test() -> Iterator[None]:
    """Kill what a scenario started and left running (it failed before stopping it): a
    process left behind would load the next tests, and its Popen, collected later, fail
    whichever test is running then with a ResourceWarning."""
    yield
    for service in STARTED:
        if service.alive():
            service.kill()
    STARTED.clear()


@pytest.fixture(scope="session")
def fault_seed() -> int:
    """The seed every random fault schedule of this run derives from."""
    return SEED


@pytest.fixture(scope="session")
def injected() -> Counter[str]:
    """The run's count of injected faults, by kind."""
    return _injected


@pytest.fixture(scope="session")
def observed() -> Counter[str]:
    """What the run saw while faults were on (503s, dropped connections, restarts)."""
    return _observed


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
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL server this session may kill (never the shared one on 55432)."""
    with server_home("pg") as home:
        server = start_private_postgres(home)
        try:
            yield server
        finally:
            server.stop()


CONTRACT_TABLES = [
    "events",
    "meter_error_reports",  # fetched from the fake Stripe API (thin events)
    "subscriptions",
    "subscription_items",
    "invoices",
    "invoice_lines",
    "meters",
    "meter_reconciliation",
    "meter_credit_notes",
    "transfers",
    "connect_balances",
    "lattice.dead_letters",
]


@dataclass(frozen=True)
class Reference:
    """The tables one clean run of every projector gives for the fault stream."""

    tables: dict[str, list[tuple[Any, ...]]]
    records: int


@pytest.fixture(scope="session", autouse=True)
async def stripe_api() -> AsyncIterator[FakeStripe]:
    """The fake Stripe API every projector of the suite fetches thin events' bodies from
    (the tests' event loop serves it: they all run in the session's loop)."""
    fake = FakeStripe(api_key=API_KEY)
    for body in thin_event_bodies():
        fake.add_v2_event(body)
    async with serve(fake) as running_fake:
        STRIPE_API["base"] = running_fake.url
        yield running_fake
    _observed["thin-event bodies fetched from the fake Stripe API"] += len(
        fake.requests_to("/v2/core/events/")
    )


@pytest.fixture(scope="session")
async def reference(stack: Stack, stripe_api: FakeStripe) -> AsyncIterator[Reference]:
    """Run every projection once, undisturbed, over the fault stream; snapshot its tables."""
    prefix = f"ref{uuid.uuid4().hex[:8]}"
    topics: Topics = await create_topics(stack.kafka_bootstrap, prefix)
    await produce_stream(stack.kafka_bootstrap, topics)
    try:
        async with extra_database(stack.database_url, prefix) as url:
            settings = settings_for(stack.kafka_bootstrap, url, topics, prefix)
            ends = await log_end_positions(stack.kafka_bootstrap, topics)
            async with (
                open_hydrator(settings) as hydrate,
                running(settings, list(discover().values()), hydrate=hydrate),
            ):
                await eventually(
                    lambda: stored_positions(url),
                    caught_up(expected_positions(settings, ends)),
                    timeout=120,
                    what="the reference run at the log end",
                )
            tables = await snapshot(url, topics)
            empty = [t for t in CONTRACT_TABLES if not tables.get(t)]
            assert not empty, f"the fault stream leaves {empty} empty: it would prove nothing"
            await _assert_only_the_poison_was_dead_lettered(stack, topics, tables)
            yield Reference(tables, sum(ends.values()))
    finally:
        await delete_topics(stack.kafka_bootstrap, [topics.events, topics.dlq, topics.usage])


async def _assert_only_the_poison_was_dead_lettered(
    stack: Stack, topics: Topics, tables: dict[str, list[tuple[Any, ...]]]
) -> None:
    """The fault runs are compared with the reference, and both run the same projectors: a
    good record dead-lettered (or a row dropped) in both would go unseen. So the reference
    must dead-letter the planted poison and nothing else, and every projector that reads
    the events topic must refuse the records that are not even JSON."""
    on_log = await read_all(stack.kafka_bootstrap, topics.events)
    poison = {(r.partition, r.offset): r.value for r in on_log if r.value in POISON}
    assert len(poison) == len(POISON)
    dead = tables["lattice.dead_letters"]
    assert {(topic, partition, offset) for _, topic, partition, offset in dead} <= {
        ("<events>", partition, offset) for partition, offset in poison
    }, dead
    not_json = {place for place, value in poison.items() if not value.startswith(b"{")}
    readers = {projector for projector, *_ in dead}
    assert readers >= {"events", "subscriptions", "invoices", "connect", "meters"}, readers
    for projector in readers:
        refused = {(partition, offset) for p, _, partition, offset in dead if p == projector}
        assert refused >= not_json, f"{projector} applied a record that is not JSON"
