"""The broker fails under the receiver: SIGKILLed under load and restarted, stopped, or
refusing writes. Invariant: a 200 only for a record on the log; otherwise a 503 with
`Retry-After` (or a dropped connection), and the load generator's redeliveries, as
Stripe's, end with every event on the log."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from deploy.stack.topics import FOREVER, delete_topics, ensure_topics, record_limit
from ingest.publisher import Publisher, PublishUnavailable, sender_stopped
from ingest.signature import sign_header
from tests.conftest import Stack
from tests.faults.loadgen import LoadGenerator, LoadReport
from tests.faults.receiving import (
    SECRET,
    SECRETS,
    assert_every_200_is_logged,
    assert_no_secret_in,
    event_deliveries,
    running_receiver,
)
from tests.faults.services import PrivateKafka
from tests.fixtures.records import log_record
from tests.support.kafka import read_all
from tests.support.wait import eventually

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_broker_sigkilled_under_load_loses_no_accepted_delivery(
    live_kafka: PrivateKafka,
    unique: str,
    tmp_path: Path,
    fault_seed: int,
    injected: Counter[str],
    observed: Counter[str],
) -> None:
    topic = f"{unique}.stripe.events"
    await ensure_topics(live_kafka.bootstrap, [topic], partitions=3)
    rng = random.Random(fault_seed)
    sent = event_deliveries(1200, seed=fault_seed)
    kill_after = rng.randrange(150, 500)
    log = tmp_path / "receiver.log"
    async with running_receiver(live_kafka.bootstrap, topic, log) as rx:
        load = LoadGenerator(rx.base_url, SECRETS, concurrency=16, rate=150)
        delivering = asyncio.create_task(load.run(sent, deadline=150))
        await eventually(
            lambda: _value(load.report.accepted.total()),
            lambda n: n >= kill_after,
            timeout=60,
            what="deliveries accepted before the kill",
        )
        await asyncio.to_thread(live_kafka.kill)
        injected["broker SIGKILL under load"] += 1
        # The outage must be seen by the load generator before the broker comes back.
        await eventually(
            lambda: _value(load.report.statuses[503] + load.report.connection_errors),
            lambda n: n > 0,
            timeout=30,
            what="a 503 while the broker is down",
        )
        await asyncio.to_thread(live_kafka.start)
        report = await delivering
    observed["broker SIGKILL: 503 answers"] += report.statuses[503]
    observed["broker SIGKILL: dropped connections"] += report.connection_errors
    observed["broker SIGKILL: deliveries accepted"] += len(report.accepted)
    assert report.refused == []
    assert report.unavailable_without_retry_after == 0
    assert set(report.accepted) == {d.event_id for d in sent}, "a delivery never got its 200"
    await assert_every_200_is_logged(live_kafka.bootstrap, topic, sent, report)
    assert_no_secret_in(log.read_text(errors="replace"))
    await delete_topics(live_kafka.bootstrap, [topic])


async def test_a_stopped_broker_gets_503_with_retry_after_never_200(
    live_kafka: PrivateKafka, unique: str, tmp_path: Path, injected: Counter[str]
) -> None:
    topic = f"{unique}.stripe.events"
    await ensure_topics(live_kafka.bootstrap, [topic], partitions=3)
    before, during = event_deliveries(40, seed=1)[:20], event_deliveries(60, seed=2)[20:60]
    probe = event_deliveries(1, seed=4)
    async with running_receiver(live_kafka.bootstrap, topic, tmp_path / "rx.log") as rx:
        await LoadGenerator(rx.base_url, SECRETS, concurrency=4).run(before)
        await asyncio.to_thread(live_kafka.stop)
        injected["broker stopped"] += 1
        async with httpx.AsyncClient(base_url=rx.base_url, timeout=30) as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert "retry-after" in ready.headers
            # Each delivered once while the broker is down: all 503 with Retry-After. The
            # first one's batch stays in flight (an idempotent producer retries it until
            # the broker is back); the others queue behind it.
            once = LoadGenerator(rx.base_url, SECRETS, concurrency=8)
            answers = [await _single(client, during[0].body)]
            answers += await asyncio.gather(*(_single(client, d.body) for d in during[1:]))
            assert answers == [(503, True)] * len(during), Counter(answers)
            await asyncio.to_thread(live_kafka.start)
            await eventually(
                lambda: _single(client, probe[0].body),
                lambda answer: answer[0] == 200,
                timeout=90,
                what="a delivery accepted once the broker is back",
            )
        # What queued behind the stuck batch was answered 503 (Stripe sends it again), so
        # it is not appended when the broker returns: only the redelivery will be.
        logged = {
            r.headers["stripe-event-id"].decode()
            for r in await read_all(live_kafka.bootstrap, topic)
        }
        queued = {d.event_id for d in during[1:]} - {during[0].event_id}
        assert not logged & queued, f"{len(logged & queued)} answered 503 were appended"
        report = await once.run(during, deadline=90)
    assert set(report.accepted) == {d.event_id for d in during}
    await assert_every_200_is_logged(live_kafka.bootstrap, topic, before + during + probe, report)
    await delete_topics(live_kafka.bootstrap, [topic])


async def test_a_receiver_stopped_while_the_broker_is_down_exits_cleanly(
    live_kafka: PrivateKafka, unique: str, tmp_path: Path, injected: Counter[str]
) -> None:
    """SIGTERM with a batch the idempotent producer retries for ever: the flush and the
    producer's stop are bounded, so the process ends by itself (not SIGKILLed after 30 s)."""
    topic = f"{unique}.stripe.events"
    await ensure_topics(live_kafka.bootstrap, [topic], partitions=3)
    first, second = event_deliveries(2, seed=5)
    log = tmp_path / "rx.log"
    async with running_receiver(live_kafka.bootstrap, topic, log) as rx:
        async with httpx.AsyncClient(base_url=rx.base_url, timeout=30) as client:
            assert await _single(client, first.body) == (200, False)
            await asyncio.to_thread(live_kafka.stop)
            injected["broker stopped"] += 1
            assert await _single(client, second.body) == (503, True)
        await asyncio.to_thread(rx.service.stop)  # SIGTERM; SIGKILL only after 30 s
        # uvicorn ends a graceful shutdown by re-raising SIGTERM: -15 is a clean end, -9
        # the SIGKILL after 30 s.
        assert rx.service.exits in ([0], [-signal.SIGTERM]), log.read_text()[-2000:]
    output = log.read_text(errors="replace")
    assert "kafka_producer_not_closed" in output
    assert "Application shutdown complete." in output


async def test_a_broker_refusing_writes_gets_503_never_200(
    stack: Stack, unique: str, tmp_path: Path, injected: Counter[str]
) -> None:
    """The topic's max.message.bytes lowered far below any event after the receiver
    connected: the broker is up and answers, but will not take the write, like a full
    disk. (A retriable refusal cannot be made on one broker: since Kafka 3.7 a
    min.insync.replicas above the replica count is capped to it, so writes are taken.)
    The first batch is the broker's refusal; the receiver then starts a new producer,
    which reads the new limit and refuses the rest itself (`too_large_for_log`)."""
    topic = f"{unique}.stripe.events"
    await ensure_topics(stack.kafka_bootstrap, [topic], partitions=3)
    sent = event_deliveries(30, seed=3)
    log = tmp_path / "rx.log"
    async with (
        running_receiver(stack.kafka_bootstrap, topic, log) as rx,
        httpx.AsyncClient(base_url=rx.base_url, timeout=30) as client,
    ):
        # Ready (`running_receiver` waits for it): connected, and the old limit read,
        # before the limit goes down.
        admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
        await admin.start()
        try:
            config = {**FOREVER, "max.message.bytes": "64"}
            await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, config)])
        finally:
            await admin.close()
        await eventually(lambda: record_limit(stack.kafka_bootstrap, topic), lambda n: n == 64)
        answers = await asyncio.gather(*(_answer(client, d.body) for d in sent))
    injected["broker refusing writes"] += len(sent)
    assert {(status, retry) for status, retry, _ in answers} == {(503, True)}, Counter(answers)
    reasons = Counter(reason for _, _, reason in answers)
    assert reasons["kafka_error"] > 0, reasons
    assert set(reasons) <= {"kafka_error", "not_connected", "too_large_for_log"}, reasons
    await assert_every_200_is_logged(stack.kafka_bootstrap, topic, sent, LoadReport())
    assert_no_secret_in(log.read_text(errors="replace"))
    await delete_topics(stack.kafka_bootstrap, [topic])


async def _answer(client: httpx.AsyncClient, body: bytes) -> tuple[int, bool, str]:
    """One signed attempt, no retry: (status, has Retry-After, the error it names)."""
    header = sign_header(body, SECRET, int(time.time()))
    answer = await client.post(
        "/webhooks/platform", content=body, headers={"Stripe-Signature": header}
    )
    return answer.status_code, "retry-after" in answer.headers, answer.json().get("error", "")


async def _single(client: httpx.AsyncClient, body: bytes) -> tuple[int, bool]:
    """One signed attempt, no retry: (status, has Retry-After)."""
    status, retry, _ = await _answer(client, body)
    return status, retry


async def _value(n: int) -> int:
    return n


async def test_a_producer_retired_while_the_broker_is_down_appends_nothing_later(
    live_kafka: PrivateKafka, unique: str, injected: Counter[str]
) -> None:
    """A producer replaced while the broker is down (as after a fatal error): its flush and
    stop time out, and then its sender and connections are ended as well, so the record it
    still held (answered 503 already) is not appended behind our back when the broker
    returns; only Stripe's redelivery would be."""
    topic = f"{unique}.stripe.events"
    await ensure_topics(live_kafka.bootstrap, [topic], partitions=1)
    first, stuck, after = (json.loads(d.body) for d in event_deliveries(3, seed=11))
    publisher = Publisher(bootstrap=live_kafka.bootstrap, topic=topic, timeout=1.0)
    await publisher.start()

    def appended(event: dict[str, Any]) -> Callable[[], Awaitable[bool]]:
        async def publish() -> bool:
            try:
                await publisher.publish(log_record(event))
            except PublishUnavailable:
                return False
            return True

        return publish

    try:
        # The short timeout is for the stuck record; a slow machine may miss it at the
        # first connection or append, which is not what this test is about.
        await eventually(appended(first), bool, timeout=60, what="the first record appended")
        await asyncio.to_thread(live_kafka.stop)
        injected["broker stopped"] += 1
        with pytest.raises(PublishUnavailable):
            await publisher.publish(log_record(stuck))
        broken = publisher._batcher
        assert broken is not None
        publisher._replace(broken)
        assert publisher._retiring is not None
        await publisher._retiring
        assert sender_stopped(broken.producer), "the retired producer is still sending"
        await asyncio.to_thread(live_kafka.start)
        await eventually(appended(after), bool, timeout=90, what="a record appended again")
        await asyncio.sleep(3)  # time for anything the old producer held to land
    finally:
        await publisher.stop()
    logged = [
        r.headers["stripe-event-id"].decode() for r in await read_all(live_kafka.bootstrap, topic)
    ]
    assert stuck["id"] not in logged
    assert {first["id"], after["id"]} <= set(logged)
    await delete_topics(live_kafka.bootstrap, [topic])
