"""The meters projection end to end: records on real Kafka topics, the real runner, thin
error reports hydrated from a fake Stripe API, rows in a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from pydantic import SecretStr

from deploy.settings import Settings
from ingest.record import build_record
from projectors.meters import projection
from projectors.migrate import ensure_runtime
from projectors.service import run_projections
from projectors.stripe_api.breaker import CircuitBreaker
from projectors.stripe_api.client import StripeClient
from projectors.stripe_api.hydrate import Hydrator
from projectors.stripe_api.retry import RetryPolicy
from tests.conftest import Topics
from tests.support.fake_stripe import FakeStripe, serve
from tests.support.kafka import read_all
from tests.support.meter_scenario import billing_month, expected_decimal
from tests.support.wait import eventually

pytestmark = pytest.mark.integration

RECEIVED = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


async def _no_wait(_: float) -> None:
    return None


@pytest.fixture
async def hydrator(database_url: str) -> AsyncIterator[tuple[Hydrator, FakeStripe]]:
    conn = await asyncpg.connect(database_url)
    try:
        await ensure_runtime(conn)
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    async with serve(FakeStripe()) as fake:
        client = StripeClient(
            api_key=SecretStr(fake.api_key),
            base_url=fake.url,
            api_version="2025-10-29.clover",
            retry=RetryPolicy(max_retries=2, base_delay=0.01),
            breaker=CircuitBreaker(threshold=50, cooldown=60),
            timeout=httpx.Timeout(5.0),
            sleep=_no_wait,
        )
        async with client:
            yield Hydrator(pool, client), fake
    await pool.close()


async def produce(bootstrap: str, records: list[tuple[str, bytes, bytes, list[Any]]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for topic, key, value, headers in records:
            await producer.send(topic, value=value, key=key, headers=headers)
        await producer.flush()
    finally:
        await producer.stop()


async def test_the_runner_reconciles_a_month_from_both_topics(
    settings: Settings,
    topics: Topics,
    database_url: str,
    hydrator: tuple[Hydrator, FakeStripe],
) -> None:
    hydrate, fake = hydrator
    scenario = billing_month()
    outgoing: list[tuple[str, bytes, bytes, list[Any]]] = []
    for evt in scenario.stripe_events:
        if evt["object"] == "v2.core.event":
            fake.add_v2_event(evt)  # Stripe has the full body; the log has the thin event
            evt = {k: v for k, v in evt.items() if k != "data"}
        log = build_record(orjson.dumps(evt), evt, endpoint="platform", received_at=RECEIVED)
        outgoing.append((topics.events, log.key, log.value, log.headers))
    for fact in scenario.facts:
        key = fact["stripe_customer_id"].encode()
        outgoing.append((topics.usage, key, orjson.dumps(fact), []))
    outgoing.append((topics.usage, b"cus_basil", b'{"identifier": "x", "value": "ten"}', []))
    await produce(settings.kafka_bootstrap, outgoing)

    stop = asyncio.Event()
    runner = asyncio.create_task(
        run_projections(settings, [projection], hydrate=hydrate, stop=stop, handle_signals=False)
    )
    conn = await asyncpg.connect(database_url)
    try:
        expected = {k: expected_decimal(v) for k, v in scenario.expected.items()}

        async def table() -> dict[tuple[str, str], tuple[Any, ...]]:
            if runner.done():
                runner.result()  # surface a crashed runner instead of waiting out the deadline
            exists = await conn.fetchval("SELECT to_regclass('projections.meter_reconciliation')")
            if exists is None:
                return {}
            rows = await conn.fetch(
                "SELECT customer, meter, reported_value, rejected_value, billed_quantity, delta,"
                " status FROM projections.meter_reconciliation"
            )
            return {(r[0], r[1]): tuple(r[2:]) for r in rows}

        await eventually(table, lambda got: got == expected, timeout=60, what="reconciliation")
        dead = await eventually(
            lambda: read_all(settings.kafka_bootstrap, topics.dlq), what="dead letter"
        )
        assert [r.value for r in dead] == [b'{"identifier": "x", "value": "ten"}']
        error = dead[0].headers["lattice-error"].decode()
        assert "not a usage fact" in error
        assert "must be a plain decimal" in error
        assert len(fake.requests_to("/v2/core/events/")) == 2
    finally:
        stop.set()
        await runner
        await conn.close()
