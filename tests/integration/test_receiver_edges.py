"""Edge cases of delivery: clients too slow or hanging up mid-body, paths with a trailing
slash. Each gets a clear answer and nothing on the topic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, MutableMapping
from typing import Any

import httpx
import orjson
import pytest
import structlog

from deploy.settings import Settings
from ingest.app import create_app
from ingest.publisher import UNREACHABLE_LOG_SECONDS, Publisher
from ingest.signature import sign_header
from tests.integration.test_receiver import (
    PLATFORM_NEW,
    receiver_settings,
    running,
    subscription_event,
)
from tests.support.kafka import read_all
from tests.support.ports import free_port

pytestmark = pytest.mark.integration


async def test_a_body_sent_too_slowly_is_cut_off_with_408(settings: Settings) -> None:
    body = orjson.dumps(subscription_event(1))
    header = sign_header(body, PLATFORM_NEW, int(time.time()))

    async def trickle() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 64):
            yield body[i : i + 64]
            await asyncio.sleep(0.1)  # the slow client under test, not a wait for a result

    async with running(receiver_settings(settings, body_timeout=0.3)) as client:
        answer = await client.post(
            "/webhooks/platform", content=trickle(), headers={"Stripe-Signature": header}
        )
        assert answer.status_code == 408
        assert answer.json()["error"] == "body_timeout"
        # The same body sent at once is accepted: the cut-off was about time, not content.
        whole = await client.post(
            "/webhooks/platform", content=body, headers={"Stripe-Signature": header}
        )
        assert whole.status_code == 200
    records = await read_all(settings.kafka_bootstrap, settings.topic)
    assert [r.value for r in records] == [body]


async def test_a_client_that_hangs_up_mid_body_writes_nothing(settings: Settings) -> None:
    """All of a correctly signed body arrived, but not its end: the hang-up, not a
    signature over part of a body, is why nothing is written."""
    body = orjson.dumps(subscription_event(2))
    header = sign_header(body, PLATFORM_NEW, int(time.time()))
    sent: list[MutableMapping[str, Any]] = []
    messages: Iterator[dict[str, Any]] = iter(
        [
            {"type": "http.request", "body": body, "more_body": True},
            {"type": "http.disconnect"},
        ]
    )

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/webhooks/platform",
        "raw_path": b"/webhooks/platform",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"stripe-signature", header.encode()), (b"host", b"receiver")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    app = create_app(receiver_settings(settings))
    async with app.router.lifespan_context(app):
        await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 400
    answer = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert orjson.loads(answer)["error"] == "client_disconnected"
    assert await read_all(settings.kafka_bootstrap, settings.topic) == []


async def test_a_trailing_slash_is_not_redirected(settings: Settings) -> None:
    body = orjson.dumps(subscription_event(3))
    header = sign_header(body, PLATFORM_NEW, int(time.time()))
    async with running(receiver_settings(settings)) as client:
        answer = await client.post(
            "/webhooks/platform/", content=body, headers={"Stripe-Signature": header}
        )
    assert answer.status_code == 404
    assert answer.json()["error"] == "not_found"
    assert await read_all(settings.kafka_bootstrap, settings.topic) == []


async def test_behind_a_root_path_deliveries_take_the_routed_path(settings: Settings) -> None:
    # Mounted under a prefix, the fast dispatch stands aside and Starlette routes the
    # delivery to the same handler; a nested path is still unknown.
    body = orjson.dumps(subscription_event(4))
    header = sign_header(body, PLATFORM_NEW, int(time.time()))
    app = create_app(receiver_settings(settings))
    transport = httpx.ASGITransport(app=app, root_path="/stripe")
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://receiver") as client,
    ):
        accepted = await client.post(
            "/stripe/webhooks/platform", content=body, headers={"Stripe-Signature": header}
        )
        nested = await client.post(
            "/stripe/webhooks/platform/x", content=body, headers={"Stripe-Signature": header}
        )
    assert accepted.status_code == 200, accepted.text
    assert nested.status_code == 404
    records = await read_all(settings.kafka_bootstrap, settings.topic)
    assert [r.value for r in records] == [body]
    assert records[0].headers["lattice-endpoint"] == b"platform"


async def test_an_absent_broker_is_logged_once_then_every_half_minute() -> None:
    """The receiver tries to connect every second while the broker is away: each failed
    try is counted, but the warning comes the first time, then once per interval with
    the count of tries since (one line a second per worker would flood the log)."""
    publisher = Publisher(bootstrap=f"127.0.0.1:{free_port()}", topic="stripe.events", timeout=1)
    clock = [1000.0]
    publisher.clock = lambda: clock[0]
    with structlog.testing.capture_logs() as captured:
        for _ in range(5):
            assert not await publisher._try_connect()
            clock[0] += 1.0
        clock[0] += UNREACHABLE_LOG_SECONDS
        assert not await publisher._try_connect()
    lines = [(c["event"], c["tries"]) for c in captured if c["log_level"] == "warning"]
    assert lines == [("kafka_unreachable", 1), ("kafka_unreachable", 5)]
    assert publisher.unready.endswith("does not answer")


async def test_a_broker_that_takes_connections_but_never_answers_does_not_hold_up_start() -> None:
    """A blackholed address (a firewall dropping replies, a broker hung): connections open,
    no answer comes. `start` returns within its bounds, unready and trying in the
    background, so the receiver listens and answers 503 instead of not starting at all."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # read nothing, answer nothing

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    publisher = Publisher(bootstrap=f"127.0.0.1:{port}", topic="stripe.events", timeout=1)
    try:
        started = time.monotonic()
        await asyncio.wait_for(publisher.start(), 10)
        assert time.monotonic() - started < 5
        assert held, "nothing connected to the silent broker"
        assert publisher.unready.endswith("does not answer")
    finally:
        await asyncio.wait_for(publisher.stop(), 10)
        server.close()
        for writer in held:
            writer.close()
