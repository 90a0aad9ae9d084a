"""PostgreSQL restarted under a running projector: it waits, reconnects and goes on.

Uses a private PostgreSQL server (the shared one is never restarted)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from deploy.settings import Settings
from deploy.stack import postgres
from projectors.events import projection as events
from projectors.metrics import RuntimeMetrics
from tests.conftest import Stack
from tests.support.audit_projection import AuditProjection, assert_each_applied_once
from tests.support.homes import server_home
from tests.support.ports import free_port
from tests.support.projectors import log_ends, positions, rows, running
from tests.support.stripe_stream import produce, records, stream
from tests.support.wait import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
async def private_pg() -> AsyncIterator[tuple[Path, int]]:
    """A PostgreSQL server of this test's own: its home and port."""
    with server_home("pg") as home:
        port = free_port()
        await asyncio.to_thread(postgres.start, home, port=port)
        try:
            yield home, port
        finally:
            await asyncio.to_thread(postgres.stop, home)


async def test_postgresql_restart_loses_and_doubles_nothing(
    settings: Settings, stack: Stack, private_pg: tuple[Path, int], unique: str
) -> None:
    home, port = private_pg
    url = postgres.url(port)
    ours = settings.model_copy(update={"database_url": url, "group_prefix": unique})
    stream_ = records(stream(900, seed=21))
    metrics = RuntimeMetrics()

    def errors() -> float:
        found = metrics.registry.get_sample_value(
            "lattice_projector_database_errors_total", {"projector": "audit"}
        )
        return found or 0.0

    async def at_end() -> bool:
        ends = await log_ends(stack.kafka_bootstrap, settings.topic)
        return all([await positions(url, n) == ends for n in ("events", "audit")])

    async with running(ours, [events, AuditProjection()], metrics=metrics):
        await produce(stack.kafka_bootstrap, settings.topic, stream_[:300])
        await eventually(at_end, timeout=30, what="first part applied")
        await asyncio.to_thread(postgres.stop, home)
        # Records arrive while the database is down: the runner must not skip them.
        await produce(stack.kafka_bootstrap, settings.topic, stream_[300:600])
        # The outage is seen before it ends (on a busy machine the restart could come
        # before the runner next needed the database).
        await eventually(
            lambda: asyncio.sleep(0, errors()), lambda n: n > 0, what="the outage seen"
        )
        await asyncio.to_thread(postgres.start, home, port=port)
        await produce(stack.kafka_bootstrap, settings.topic, stream_[600:])
        await eventually(at_end, timeout=60, what="every record applied after the restart")

    await assert_each_applied_once(url, len(stream_))
    ids = {r[0] for r in await rows(url, "SELECT id FROM projections.events")}
    assert ids == {r.headers[0][1].decode() for r in stream_}
    sample = metrics.registry.get_sample_value
    assert sample("lattice_projector_events_applied_total", {"projector": "audit"}) == len(stream_)
    # The outage was really seen (and survived), not slept through.
    assert errors() > 0
