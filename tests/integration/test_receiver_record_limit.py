"""The largest record the event log takes (its topic's `max.message.bytes`) against the
largest body the receiver takes (`max_body_bytes`): the stack provisions the log to take
any body the receiver does, and a receiver pointed at a log that takes less refuses what
would not fit before the broker does, without costing any other delivery."""

from __future__ import annotations

import asyncio
import base64
import random
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import structlog
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

import ingest.record_limit
from deploy.settings import Settings
from deploy.stack.topics import (
    DEAD_LETTER_MAX_MESSAGE_BYTES,
    FOREVER,
    RECORD_HEADROOM,
    delete_topics,
    ensure_topics,
    record_limit,
    record_limits_for,
)
from ingest.app import create_app
from ingest.publisher import Publisher
from tests.integration.test_receiver import (
    PLATFORM_NEW,
    encode,
    receiver_settings,
    running,
    signed,
    subscription_event,
)
from tests.support.kafka import read_all
from tests.support.wait import eventually

pytestmark = pytest.mark.integration


def padded(n: int, note: str) -> bytes:
    """A real-shaped subscription event carrying `note` in its metadata."""
    event = subscription_event(n)
    event["data"]["object"]["metadata"] = {"note": note}
    return encode(event)


def incompressible(size: int, seed: int) -> str:
    """`size` characters that zstd shrinks by a quarter at most (base64 of random bytes)."""
    return base64.b64encode(random.Random(seed).randbytes(size * 3 // 4 + 3)).decode()[:size]


async def deliver(client: httpx.AsyncClient, body: bytes) -> tuple[int, dict[str, Any]]:
    answer = await client.post(
        "/webhooks/platform", content=body, headers=signed(body, PLATFORM_NEW)
    )
    return answer.status_code, {**answer.json(), **dict(answer.headers)}


@asynccontextmanager
async def small_topic(settings: Settings, limit: int) -> AsyncIterator[str]:
    """A topic of one partition that takes records up to `limit` bytes."""
    topic = f"{settings.topic}.small"
    await ensure_topics(
        settings.kafka_bootstrap, [topic], partitions=1, record_limits={topic: limit}
    )
    try:
        yield topic
    finally:
        await delete_topics(settings.kafka_bootstrap, [topic])


@asynccontextmanager
async def receiving(config: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Publisher]]:
    """The receiver in-process, a client that talks to it, and its publisher."""
    app = create_app(config)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rx") as client,
    ):
        yield client, app.state.receiver.publisher


def producer_of(publisher: Publisher) -> Any:
    """The publisher's producer now (a new one after a failure that ended its sequence)."""
    batcher = publisher._batcher
    assert batcher is not None, "not connected"
    return batcher.producer


async def test_an_event_over_the_logs_limit_is_a_503_that_costs_no_other_delivery(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A topic that takes records up to 60,000 bytes, a receiver that takes bodies up to
    256 KiB. A body that compresses to more is refused before the broker sees it (the
    broker's refusal would end the producer's sequence: a new producer, and 503s for the
    deliveries after it); one larger than the limit that compresses below it is taken.
    Once the topic's limit is raised, the refused event is taken at its next try: the
    receiver reads the limit again before it refuses (here every time; 10 s apart)."""
    monkeypatch.setattr(ingest.record_limit, "LIMIT_REREAD_SECONDS", 0.0)
    too_large = padded(0, incompressible(100_000, seed=1))
    compressible = padded(1, "the same line again; " * 7_000)
    small, later = padded(2, "small"), padded(3, "small")
    assert len(compressible) > 60_000
    async with small_topic(settings, 60_000) as topic:
        config = receiver_settings(settings, topic=topic, max_body_bytes=256 * 1024)
        async with receiving(config) as (client, publisher):
            assert publisher.record_limit.value == 60_000
            producer = producer_of(publisher)
            status, refused = await deliver(client, too_large)
            assert (status, refused["error"], refused["retry-after"]) == (
                503,
                "too_large_for_log",
                "5",
            )
            assert "over the 60000 bytes the event log takes" in refused["message"]
            answers = [(await deliver(client, body))[0] for body in (small, compressible, later)]
            assert answers == [200, 200, 200]

            await raise_limit(settings.kafka_bootstrap, topic, 1024 * 1024)
            assert (await deliver(client, too_large))[0] == 200
            assert publisher.record_limit.value == 1024 * 1024
            assert producer_of(publisher) is producer, "the producer was replaced"
            metrics = (await client.get("/metrics")).text
        assert 'lattice_kafka_producer_errors_total{reason="too_large_for_log"} 1.0' in metrics
        logged = await read_all(settings.kafka_bootstrap, topic)
        assert [record.value for record in logged] == [small, compressible, later, too_large]


async def raise_limit(bootstrap: str, topic: str, limit: int) -> None:
    """Set `topic`'s max.message.bytes (its whole config: the admin API replaces it) and
    wait until the broker says so."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        config = {**FOREVER, "max.message.bytes": str(limit)}
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, config)])
    finally:
        await admin.close()
    await eventually(lambda: record_limit(bootstrap, topic), lambda n: n == limit)


async def test_batches_stay_within_a_small_topic_limit_under_load(settings: Settings) -> None:
    """300 deliveries at once of ~3 KB that compress little, to a topic that takes 60,000
    bytes: the batches they share must each fit, or the broker refuses the whole batch
    (every delivery in it a 503, and a new producer)."""
    bodies = [padded(n, incompressible(2_000, seed=n)) for n in range(300)]
    async with small_topic(settings, 60_000) as topic:
        # Some wait behind a score of acks=all round trips on the one partition.
        config = receiver_settings(settings, topic=topic, publish_timeout=30.0)
        async with receiving(config) as (client, publisher):
            producer = producer_of(publisher)
            answers = await asyncio.gather(*(deliver(client, body) for body in bodies))
            assert Counter(status for status, _ in answers) == {200: len(bodies)}
            assert producer_of(publisher) is producer, "the producer was replaced"
        logged = await read_all(settings.kafka_bootstrap, topic)
        assert sorted(record.value or b"" for record in logged) == sorted(bodies)


async def test_the_stacks_log_takes_a_body_at_the_receivers_limit_even_uncompressed(
    settings: Settings,
) -> None:
    """Provisioned for a receiver that takes 2 MiB (the broker's default limit is 1 MiB),
    the log takes a 2 MiB body that barely compresses, and its dead letters one more
    header's worth. A log made before, with less, is named in a warning with the command
    that raises it."""
    body_limit = 2 * 1024 * 1024
    log, letters = f"{settings.topic}.big", f"{settings.topic}.big.dlq"
    await ensure_topics(
        settings.kafka_bootstrap,
        [log, letters],
        partitions=1,
        record_limits=record_limits_for(log, body_limit),
    )
    try:
        assert await record_limit(settings.kafka_bootstrap, log) == body_limit + RECORD_HEADROOM
        assert await record_limit(settings.kafka_bootstrap, letters) == (
            DEAD_LETTER_MAX_MESSAGE_BYTES
        )
        config = receiver_settings(settings, topic=log, max_body_bytes=body_limit)
        head = len(padded(0, ""))
        largest = padded(0, incompressible(body_limit - head, seed=2))
        assert len(largest) == body_limit
        async with running(config) as client:
            assert (await deliver(client, largest))[0] == 200
        assert [r.value for r in await read_all(settings.kafka_bootstrap, log)] == [largest]

        raised = record_limits_for(log, 2 * body_limit)
        with structlog.testing.capture_logs() as warned:
            await ensure_topics(
                settings.kafka_bootstrap, [log, letters], partitions=1, record_limits=raised
            )
        assert [(e["log_level"], e["topic"]) for e in warned] == [("warning", log)]
        assert warned[0]["event"].endswith(
            f"--entity-name {log} --add-config max.message.bytes={raised[log]}"
        )
    finally:
        await delete_topics(settings.kafka_bootstrap, [log, letters])
