"""The broker goes away while deliveries arrive: 503, never 200; it returns: nothing is lost.

Runs its own broker (on a free port, under tmp_path) so that stopping it disturbs nobody.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydantic import SecretStr

from deploy.settings import Settings
from deploy.stack import kafka
from deploy.stack.topics import ensure_topics
from tests.integration.test_receiver import (
    PLATFORM_NEW,
    encode,
    running,
    signed,
    subscription_event,
)
from tests.support.homes import share_kafka_jars
from tests.support.kafka import read_all
from tests.support.ports import free_port
from tests.support.wait import eventually

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOPIC = "stripe.events"


@dataclass
class PrivateBroker:
    home: Path
    port: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        await asyncio.to_thread(kafka.start, self.home, port=self.port, partitions=1, timeout=120)

    async def stop(self) -> None:
        await asyncio.to_thread(kafka.stop, self.home)


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[PrivateBroker]:
    """A broker of this test's own, sharing the stack's jars when they are there."""
    private = PrivateBroker(share_kafka_jars(tmp_path / "stack"), free_port(2))
    await private.start()
    try:
        await ensure_topics(private.bootstrap, [TOPIC], partitions=1)
        yield private
    finally:
        await private.stop()


@dataclass
class Log:
    """Every answer the receiver gave: (event id, status, sent at, answered at)."""

    answers: list[tuple[str, int, float, float]] = field(default_factory=list)
    bodies: dict[str, bytes] = field(default_factory=dict)
    # The Retry-After of every 503 (checked afterwards: an assertion inside a sender task
    # would only end that task, and the test would fail much later for another reason).
    retry_afters: list[str | None] = field(default_factory=list)

    def ids_with(self, status: int) -> set[str]:
        return {event_id for event_id, code, _, _ in self.answers if code == status}


async def test_outage_gives_503_never_200_and_loses_nothing(broker: PrivateBroker) -> None:
    settings = Settings(
        kafka_bootstrap=broker.bootstrap,
        topic=TOPIC,
        webhook_secrets=SecretStr(f"platform={PLATFORM_NEW}"),
        publish_timeout=1.5,
    )
    log = Log()
    async with running(settings) as client:

        async def deliver(n: int, event_id: str | None = None) -> int:
            if event_id is None:
                event = subscription_event(n)
                event_id = event["id"]
                log.bodies[event_id] = encode(event)
            body = log.bodies[event_id]
            sent = time.monotonic()
            answer = await client.post(
                "/webhooks/platform", content=body, headers=signed(body, PLATFORM_NEW)
            )
            log.answers.append((event_id, answer.status_code, sent, time.monotonic()))
            if answer.status_code == 503:
                log.retry_afters.append(answer.headers.get("retry-after"))
            return answer.status_code

        async def keep_delivering(worker: int) -> None:
            for n in range(worker * 100_000, (worker + 1) * 100_000):
                await deliver(n)
                # In-process requests need no I/O: pace them so that the loop breathes.
                await asyncio.sleep(0.02)

        await eventually(lambda: client.get("/readyz"), lambda r: r.status_code == 200, timeout=60)
        assert [await deliver(n) for n in range(10)] == [200] * 10
        senders = [asyncio.create_task(keep_delivering(w + 1)) for w in range(4)]
        await broker.stop()
        stopped = time.monotonic()
        await eventually(
            lambda: asyncio.sleep(0, sum(1 for a in log.answers if a[2] > stopped)),
            lambda count: count >= 8,
            what="deliveries answered during the outage",
        )
        assert (await client.get("/readyz")).status_code == 503
        during = [code for _, code, sent, _ in log.answers if sent > stopped]
        assert set(during) == {503}
        assert log.retry_afters
        assert all(seconds is not None and seconds.isdigit() for seconds in log.retry_afters)

        await broker.start()
        restarted = time.monotonic()
        await eventually(
            lambda: asyncio.sleep(
                0, sum(1 for _, c, sent, _ in log.answers if sent > restarted and c == 200)
            ),
            lambda accepted: accepted > 0,
            timeout=60,
            what="an accepted delivery after the broker came back",
        )
        for sender in senders:
            sender.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        assert (await client.get("/readyz")).status_code == 200
        assert {code for _, code, _, _ in log.answers} <= {200, 503}
        # Stripe retries what got 503; every retry is now accepted.
        refused = log.ids_with(503) - log.ids_with(200)
        assert refused
        assert [await deliver(0, event_id) for event_id in sorted(refused)] == [200] * len(refused)

    accepted = log.ids_with(200)
    assert accepted == {event_id for event_id, *_ in log.answers}
    on_topic = {
        r.headers["stripe-event-id"].decode() for r in await read_all(broker.bootstrap, TOPIC)
    }
    missing = accepted - on_topic
    assert not missing, f"{len(missing)} accepted events are not on the topic"
