"""What the receiver scenarios share: a running receiver process, its secrets, the bodies
to deliver, and the check that the log holds every delivery that got a 200."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson

from tests.faults.loadgen import Delivery, LoadReport, deliveries
from tests.faults.services import Service, receiver, wait_http_ready
from tests.support.kafka import read_all
from tests.support.ports import free_port
from tests.support.stripe_stream import stream

SECRET = "whsec_" + secrets.token_hex(16)
SECRETS = {"platform": SECRET}
API_KEY = "sk_test_" + secrets.token_hex(16)  # in the receiver's environment, never its output


@dataclass
class Receiver:
    """A receiver process and its address."""

    service: Service
    base_url: str

    async def restart(self) -> None:
        self.service.start()
        await wait_http_ready(self.base_url, self.service)


@asynccontextmanager
async def running_receiver(
    bootstrap: str, topic: str, log: Path, *, publish_timeout: float = 1.0
) -> AsyncIterator[Receiver]:
    """A receiver process for `topic`; stopped (and its log kept) afterwards."""
    port = free_port()
    env = {
        "LATTICE_KAFKA_BOOTSTRAP": bootstrap,
        "LATTICE_TOPIC": topic,
        "LATTICE_WEBHOOK_SECRETS": f"platform={SECRET}",
        "LATTICE_PUBLISH_TIMEOUT": str(publish_timeout),
        "LATTICE_STRIPE_API_KEY": API_KEY,
    }
    service = receiver(env, log, port)
    handle = Receiver(service, f"http://127.0.0.1:{port}")
    await handle.restart()
    # Ready, not only listening: a slow first connection to the broker (the receiver tries
    # once within 2 x publish_timeout before it listens, then in the background) must not
    # turn a test's first delivery into a 503.
    await wait_http_ready(handle.base_url, service, path="/readyz")
    try:
        yield handle
    finally:
        service.stop()


def event_deliveries(count: int, seed: int) -> list[Delivery]:
    """`count` realistic snapshot deliveries (subscriptions, invoices, a few duplicates)."""
    bodies = [e.body for e in stream(count, seed=seed, thin_every=10**9)]
    return deliveries(bodies)


async def assert_every_200_is_logged(
    bootstrap: str, topic: str, sent: list[Delivery], report: LoadReport
) -> int:
    """Every accepted delivery is on the log byte for byte; nothing else is. Returns the
    number of records on the log."""
    bodies = {d.event_id: d.body for d in sent}
    logged = await read_all(bootstrap, topic)
    seen: set[str] = set()
    for record in logged:
        event_id = record.headers["stripe-event-id"].decode()
        assert event_id in bodies, f"{event_id} is on the log but was never sent"
        assert record.value == bodies[event_id], f"{event_id} is on the log, but mangled"
        assert orjson.loads(record.value)["id"] == event_id
        seen.add(event_id)
    lost = set(report.accepted) - seen
    assert not lost, f"{len(lost)} deliveries got a 200 but are not on the log: {sorted(lost)[:5]}"
    return len(logged)


def assert_no_secret_in(*outputs: str) -> None:
    """Neither the signing secret nor the API key appears in any output of the scenario."""
    for text in outputs:
        assert SECRET not in text
        assert API_KEY not in text
