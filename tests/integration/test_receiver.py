"""The receiver against the real broker: every answer checked against what is on the topic."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import httpx
import pytest
import stripe
import structlog
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

import ingest.webhook
from deploy.settings import Settings
from deploy.stack.topics import delete_topics, ensure_topics
from ingest.app import create_app
from ingest.batching import partition_for
from ingest.metrics import ReceiverMetrics
from ingest.publisher import Publisher
from ingest.signature import sign_header
from tests.support.kafka import ReadRecord, read_all
from tests.support.wait import eventually

pytestmark = pytest.mark.integration

PLATFORM_OLD = "whsec_" + secrets.token_hex(16)
PLATFORM_NEW = "whsec_" + secrets.token_hex(16)
CONNECT = "whsec_" + secrets.token_hex(16)
API_VERSION = "2025-10-29.clover"


def receiver_settings(base: Settings, **update: Any) -> Settings:
    """`base` (this test's topics) with signing secrets for `platform` (rotating) and `connect`."""
    pairs = f"platform={PLATFORM_OLD},platform={PLATFORM_NEW},connect={CONNECT}"
    return base.model_copy(update={"webhook_secrets": SecretStr(pairs), **update})


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process with its lifespan running, and a client that talks to it."""
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://receiver"
        ) as client,
    ):
        yield client


def subscription_event(n: int, *, account: str | None = None) -> dict[str, Any]:
    """A `customer.subscription.updated` snapshot event in the current API shape."""
    sub_id = f"sub_{secrets.token_hex(8)}"
    event: dict[str, Any] = {
        "id": f"evt_{secrets.token_hex(12)}",
        "object": "event",
        "api_version": API_VERSION,
        "created": 1764064800 + n,
        "data": {
            "object": {
                "id": sub_id,
                "object": "subscription",
                "customer": "cus_QXg1o8vcGmoR32",
                "status": "active",
                "cancel_at_period_end": False,
                "created": 1764000000,
                "livemode": False,
                "items": {
                    "object": "list",
                    "data": [
                        {
                            "id": f"si_{secrets.token_hex(6)}",
                            "object": "subscription_item",
                            "current_period_start": 1764000000,
                            "current_period_end": 1766592000,
                            "quantity": 1,
                            "subscription": sub_id,
                        }
                    ],
                },
            },
            "previous_attributes": {"cancel_at_period_end": True},
        },
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": "customer.subscription.updated",
    }
    if account is not None:
        event["account"] = account
    return event


def thin_event(*, context: str | None = None) -> dict[str, Any]:
    """A thin `v1.billing.meter.error_report_triggered` event (RFC 3339 `created`)."""
    meter = f"mtr_{secrets.token_hex(8)}"
    event: dict[str, Any] = {
        "id": f"evt_{secrets.token_hex(12)}",
        "object": "v2.core.event",
        "type": "v1.billing.meter.error_report_triggered",
        "created": "2026-11-25T10:00:00.123Z",
        "livemode": False,
        "related_object": {
            "id": meter,
            "type": "billing.meter",
            "url": f"/v1/billing/meters/{meter}",
        },
    }
    if context is not None:
        event["context"] = context
    return event


def encode(event: dict[str, Any]) -> bytes:
    """Stripe's own layout (2-space indent), so byte-for-byte means more than re-encoding."""
    return json.dumps(event, indent=2).encode()


def signed(body: bytes, secret: str, *, at: int | None = None) -> dict[str, str]:
    """Headers of a delivery signed like Stripe."""
    stamp = int(time.time()) if at is None else at
    return {"Stripe-Signature": sign_header(body, secret, stamp), "Content-Type": JSON}


JSON = "application/json"


def by_event_id(records: list[ReadRecord]) -> dict[str, ReadRecord]:
    """Records keyed by their `stripe-event-id` header."""
    return {r.headers["stripe-event-id"].decode(): r for r in records}


async def test_answers_match_what_is_on_the_topic(settings: Settings) -> None:
    config = receiver_settings(settings, max_body_bytes=64 * 1024)
    before_ms = int(time.time() * 1000)
    accepted: dict[str, tuple[bytes, str, dict[str, bytes]]] = {}
    async with running(config) as client:
        # Accepted: a snapshot event, a Connect snapshot signed with the new secret next to a
        # stale one (rotation), a thin Connect event.
        snap = subscription_event(1)
        body = encode(snap)
        answer = await client.post(
            "/webhooks/platform", content=body, headers=signed(body, PLATFORM_OLD)
        )
        assert (answer.status_code, answer.json()) == (200, {"received": True})
        accepted[snap["id"]] = (
            body,
            snap["data"]["object"]["id"],
            {"lattice-endpoint": b"platform"},
        )

        connect = subscription_event(2, account="acct_1Pgc6rB7WZ01zgkW")
        body = encode(connect)
        header = sign_header(body, PLATFORM_NEW, int(time.time()))
        header += ",v1=" + "0" * 64 + ",v0=" + "1" * 64
        answer = await client.post(
            "/webhooks/platform", content=body, headers={"Stripe-Signature": header}
        )
        assert answer.status_code == 200, answer.text
        accepted[connect["id"]] = (
            body,
            connect["data"]["object"]["id"],
            {"lattice-endpoint": b"platform", "stripe-account": b"acct_1Pgc6rB7WZ01zgkW"},
        )

        thin = thin_event(context="acct_1Nv0FGQ9RKHgCVdK")
        body = encode(thin)
        answer = await client.post("/webhooks/connect", content=body, headers=signed(body, CONNECT))
        assert answer.status_code == 200, answer.text
        accepted[thin["id"]] = (
            body,
            thin["related_object"]["id"],
            {"lattice-endpoint": b"connect", "stripe-account": b"acct_1Nv0FGQ9RKHgCVdK"},
        )

        rejected = list(_rejections(config.max_body_bytes))
        for path, content, headers, status, reason in rejected:
            answer = await client.post(path, content=content, headers=headers)
            assert answer.status_code == status, (reason, answer.text)
            assert answer.json()["error"] == reason
        metrics = (await client.get("/metrics")).text
    after_ms = int(time.time() * 1000)

    records = await read_all(settings.kafka_bootstrap, config.topic)
    assert len(records) == len(accepted), "a rejected delivery wrote to the log"
    assert by_event_id(records).keys() == accepted.keys(), "an accepted event is missing"
    for event_id, record in by_event_id(records).items():
        body, key, extra = accepted[event_id]
        event = json.loads(body)
        assert record.value == body
        assert record.key == key.encode()
        received_at = record.headers.pop("lattice-received-at").decode()
        assert record.headers == {
            "stripe-event-id": event_id.encode(),
            "stripe-event-type": event["type"].encode(),
            "stripe-livemode": b"false",
            **({"stripe-api-version": API_VERSION.encode()} if "api_version" in event else {}),
            **extra,
        }
        moment_ms = int(datetime.fromisoformat(received_at).timestamp() * 1000)
        assert before_ms <= record.timestamp_ms == moment_ms <= after_ms
    assert (
        'lattice_webhook_deliveries_total{endpoint="platform",'
        'event_type="customer.subscription.updated",outcome="accepted"} 2.0' in metrics
    )
    assert 'outcome="bad_signature"' in metrics


def _rejections(limit: int) -> Iterator[tuple[str, bytes, dict[str, str], int, str]]:
    """(path, body, headers, status, error) for every way a delivery is refused."""
    body = encode(subscription_event(9))
    now = int(time.time())
    yield "/webhooks/nowhere", body, signed(body, PLATFORM_OLD), 404, "unknown_endpoint"
    yield "/webhooks/platform", body, {}, 400, "missing_signature"
    yield "/webhooks/platform", body, signed(body, CONNECT), 400, "bad_signature"
    yield "/webhooks/platform", body + b" ", signed(body, PLATFORM_OLD), 400, "bad_signature"
    upper = sign_header(body, PLATFORM_OLD, now).upper().replace("T=", "t=").replace("V1=", "v1=")
    yield "/webhooks/platform", body, {"Stripe-Signature": upper}, 400, "bad_signature"
    v0_only = sign_header(body, PLATFORM_OLD, now).replace("v1=", "v0=")
    yield "/webhooks/platform", body, {"Stripe-Signature": v0_only}, 400, "no_v1_signature"
    yield "/webhooks/platform", body, {"Stripe-Signature": "v1=abc"}, 400, "malformed_signature"
    # Well past the 300 s tolerance either way: `now` is rounded down and the receiver's
    # clock moves on while the earlier deliveries are answered (the exact edge is the
    # unit tests' work, with a fixed clock).
    for stale in (now - 400, now + 400):
        headers = signed(body, PLATFORM_OLD, at=stale)
        yield "/webhooks/platform", body, headers, 400, "timestamp_out_of_tolerance"
    for bad in (
        b"not json",
        b"[1, 2]",
        json.dumps({**subscription_event(9), "id": "cus_123"}).encode(),
        json.dumps({**subscription_event(9), "object": "customer"}).encode(),
        json.dumps({**subscription_event(9), "type": 7}).encode(),
        json.dumps({**subscription_event(9), "created": True}).encode(),
        json.dumps({**thin_event(), "created": "yesterday"}).encode(),
    ):
        reason = "invalid_json" if bad == b"not json" else "not_an_event"
        yield "/webhooks/platform", bad, signed(bad, PLATFORM_OLD), 400, reason
    big = b" " * (limit + 1)
    yield "/webhooks/platform", big, signed(big, PLATFORM_OLD), 413, "too_large"


async def test_oversize_body_is_refused_while_it_streams(settings: Settings) -> None:
    config = receiver_settings(settings, max_body_bytes=64 * 1024)
    chunk, chunks = b"x" * 16 * 1024, 64
    pulled = 0

    async def stream() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(chunks):
            pulled += 1
            yield chunk

    async with running(config) as client:
        # No Content-Length: the limit can only be found by counting what arrives.
        answer = await client.post(
            "/webhooks/platform", content=stream(), headers={"Stripe-Signature": "t=1,v1=00"}
        )
        assert answer.status_code == 413
        assert answer.json()["error"] == "too_large"
    assert pulled <= config.max_body_bytes // len(chunk) + 1 < chunks
    assert await read_all(settings.kafka_bootstrap, config.topic) == []


async def test_probes(settings: Settings) -> None:
    async with running(receiver_settings(settings)) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).json() == {"ready": True}
        wrong_method = await client.get("/webhooks/platform")
        assert (wrong_method.status_code, wrong_method.json()["error"]) == (
            405,
            "method_not_allowed",
        )
        assert "POST" in wrong_method.headers["allow"]
        nowhere = await client.post("/nowhere")
        assert (nowhere.status_code, nowhere.json()["error"]) == (404, "not_found")
        metrics = await client.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        assert "lattice_kafka_producer_errors" in metrics.text


async def test_a_missing_topic_keeps_the_receiver_unready_until_it_exists(
    settings: Settings,
) -> None:
    """Started before provisioning, the receiver must not produce to (and so have a broker
    auto-create, with seven days' retention) the log: /readyz says which topic is missing,
    deliveries get 503, and once the topic exists it is ready by itself."""
    topic = f"{settings.topic}.later"
    config = receiver_settings(settings, topic=topic)
    body = encode(subscription_event(1))
    try:
        async with running(config) as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert f"topic {topic} does not exist" in ready.json()["message"]
            # /readyz is on the public port: it never names the brokers' addresses.
            assert settings.kafka_bootstrap not in ready.text
            refused = await client.post(
                "/webhooks/platform", content=body, headers=signed(body, PLATFORM_NEW)
            )
            assert (refused.status_code, refused.json()["error"]) == (503, "not_connected")
            await ensure_topics(settings.kafka_bootstrap, [topic], partitions=1)

            async def readiness() -> int:
                return (await client.get("/readyz")).status_code

            await eventually(readiness, lambda status: status == 200, timeout=20)
            accepted = await client.post(
                "/webhooks/platform", content=body, headers=signed(body, PLATFORM_NEW)
            )
            assert accepted.status_code == 200
        assert len(await read_all(settings.kafka_bootstrap, topic)) == 1
    finally:
        await delete_topics(settings.kafka_bootstrap, [topic])


async def test_a_producer_whose_sender_ended_is_replaced(settings: Settings) -> None:
    """aiokafka's sender task can end (an unexpected error in it); after that its producer
    never sends again. The receiver must not answer 503 for ever while /readyz says
    ready: it notices, says so, and starts a new producer by itself."""
    bodies = [encode(subscription_event(n)) for n in range(3)]
    app = create_app(receiver_settings(settings, publish_timeout=1.0))
    publisher = app.state.receiver.publisher
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rx") as client,
    ):

        async def deliver(body: bytes) -> int:
            answer = await client.post(
                "/webhooks/platform", content=body, headers=signed(body, PLATFORM_NEW)
            )
            return answer.status_code

        # The 1 s timeout is for the 503 below; at the first connection on a slow machine
        # it may not be enough, which is not what this test is about.
        await eventually(lambda: deliver(bodies[0]), lambda status: status == 200, timeout=60)
        broken = publisher._batcher.producer
        broken._sender.sender_task.cancel()  # the fault: the sender is gone
        await asyncio.sleep(0)
        assert await deliver(bodies[1]) == 503
        await eventually(lambda: deliver(bodies[2]), lambda status: status == 200, timeout=30)
        assert publisher._batcher.producer is not broken
        assert (await client.get("/readyz")).status_code == 200
    logged = by_event_id(await read_all(settings.kafka_bootstrap, settings.topic))
    assert {json.loads(b)["id"] for b in (bodies[0], bodies[2])} <= set(logged)


async def test_a_producer_replaced_just_before_shutdown_is_still_stopped(
    settings: Settings,
) -> None:
    """SIGTERM right after a producer was found broken: stopping the receiver cancels the
    reconnection, but the old producer is still flushed and stopped, not left running."""
    publisher = Publisher(bootstrap=settings.kafka_bootstrap, topic=settings.topic, timeout=5.0)
    await publisher.start()
    broken = publisher._batcher
    assert broken is not None
    publisher._replace(broken)
    await publisher.stop()
    assert broken.producer._closed
    assert broken.producer._sender.sender_task.done()


async def test_the_request_log_line_names_a_wrong_endpoint_and_why_kafka_refused(
    settings: Settings,
) -> None:
    """The metric keeps one `unknown` label (probing cannot grow it), but the log line
    names the endpoint asked for; a 503's line says why (here: the topic is missing)."""
    config = receiver_settings(settings, topic=f"{settings.topic}.absent")
    body = encode(subscription_event(1))
    with structlog.testing.capture_logs() as captured:
        async with running(config) as client:
            for endpoint in ("platfrom", "platform"):
                await client.post(
                    f"/webhooks/{endpoint}", content=body, headers=signed(body, PLATFORM_NEW)
                )
            # A trailing slash never reaches the endpoint: Starlette's 404, logged alike.
            slash = await client.post(
                "/webhooks/platform/", content=body, headers=signed(body, PLATFORM_NEW)
            )
            assert slash.status_code == 404
            # A name of any length is echoed cut short, in the answer as in the log.
            long = await client.post(
                "/webhooks/" + "x" * 5000, content=body, headers=signed(body, PLATFORM_NEW)
            )
            assert long.status_code == 404
            assert long.json()["message"] == f"no webhook endpoint named {'x' * 64!r}"
            metrics = (await client.get("/metrics")).text
    answered = [c for c in captured if c["event"] == "webhook"]
    assert [(c["outcome"], c.get("requested"), c.get("reason")) for c in answered] == [
        ("unknown_endpoint", "platfrom", None),
        ("unavailable", None, "not_connected"),
        ("not_found", "POST /webhooks/platform/", None),
        ("unknown_endpoint", "x" * 64, None),
    ]
    assert 'endpoint="unknown",event_type="",outcome="not_found"} 1.0' in metrics


async def test_a_delivery_on_the_log_is_answered_200_even_when_counting_it_fails(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 500 for a record already appended would have Stripe send it again and again, each
    time appended anew (a metrics folder removed under a running receiver, say)."""

    def broken(*args: object) -> None:
        raise FileNotFoundError("metrics folder gone")

    monkeypatch.setattr(ReceiverMetrics, "delivery", broken)
    event = subscription_event(1)
    body = encode(event)
    with structlog.testing.capture_logs() as captured:
        async with running(receiver_settings(settings)) as client:
            answer = await client.post(
                "/webhooks/platform", content=body, headers=signed(body, PLATFORM_NEW)
            )
    assert (answer.status_code, answer.content) == (200, b'{"received":true}')
    records = await read_all(settings.kafka_bootstrap, settings.topic)
    assert [r.value for r in records] == [body]
    assert [c["event"] for c in captured if c["log_level"] == "error"] == [
        "counting a delivery failed"
    ]


async def test_an_unexpected_failure_is_a_short_500_that_names_only_its_place(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No known input reaches it: a fault of ours must still be an answer Stripe retries,
    counted and logged without the exception's message (which may quote the body), and
    the next delivery must be served as usual."""
    failing = subscription_event(1)
    marker = failing["data"]["object"]["id"]

    def broken(body: bytes, event: Any, **_: object) -> None:
        raise ValueError(f"cannot build {event['data']['object']['id']}")

    with structlog.testing.capture_logs() as captured:
        async with running(receiver_settings(settings)) as client:
            with monkeypatch.context() as patch:
                patch.setattr(ingest.webhook, "build_received", broken)
                body = encode(failing)
                refused = await client.post(
                    "/webhooks/platform", content=body, headers=signed(body, PLATFORM_NEW)
                )
            after = encode(subscription_event(2))
            accepted = await client.post(
                "/webhooks/platform", content=after, headers=signed(after, PLATFORM_NEW)
            )
            metrics = (await client.get("/metrics")).text
    assert refused.status_code == 500
    assert refused.json() == {
        "error": "internal_error",
        "message": "the receiver failed on this delivery; send it again",
    }
    assert accepted.status_code == 200
    assert [r.value for r in await read_all(settings.kafka_bootstrap, settings.topic)] == [after]
    answered = [c for c in captured if c["event"] == "webhook"]
    assert [(c["outcome"], c["status"]) for c in answered] == [
        ("internal_error", 500),
        ("accepted", 200),
    ]
    errors = [c for c in captured if c["log_level"] == "error"]
    assert [(c["event"], c["error"]) for c in errors] == [("delivery failed", answered[0]["error"])]
    assert answered[0]["error"].startswith("ValueError at test_receiver.py:")
    assert marker not in repr(captured)
    label = 'endpoint="platform",event_type="customer.subscription.updated"'
    assert f'{label},outcome="internal_error"}} 1.0' in metrics


async def test_an_endpoint_named_and_keyed_beyond_ascii_is_routed_and_verified(
    settings: Settings,
) -> None:
    """Neither is Stripe's to name: the name is ours (any URL segment), and Stripe's
    libraries key the HMAC with the secret's UTF-8 bytes, as the receiver does."""
    secret = "whsec_clé_" + secrets.token_hex(8)
    config = settings.model_copy(update={"webhook_secrets": SecretStr(f"zürich eu={secret}")})
    event = subscription_event(1)
    body = encode(event)
    header = signed(body, secret)
    stripe.WebhookSignature.verify_header(
        body.decode(), header["Stripe-Signature"], secret, tolerance=300
    )  # the oracle agrees the delivery is Stripe's
    async with running(config) as client:
        answer = await client.post("/webhooks/z%C3%BCrich%20eu", content=body, headers=header)
    assert (answer.status_code, answer.json()) == (200, {"received": True})
    [record] = await read_all(settings.kafka_bootstrap, settings.topic)
    assert (record.value, record.headers["lattice-endpoint"]) == (body, "zürich eu".encode())


async def test_an_endpoint_name_matches_however_its_accents_are_encoded(
    settings: Settings,
) -> None:
    """`ü` may be typed as one character (NFC, most keyboards) or as `u` and a combining
    diaeresis (NFD, macOS file names): configured one way and requested the other, the
    name must still be the endpoint's, and the record and metrics carry one spelling."""
    composed, decomposed = "z\u00fcrich", "zu\u0308rich"
    bodies = [encode(subscription_event(n)) for n in range(2)]
    config = settings.model_copy(update={"webhook_secrets": SecretStr(f"{decomposed}={CONNECT}")})
    assert config.secrets_by_endpoint() == {composed: (CONNECT,)}
    async with running(config) as client:
        for spelt, body in zip(("z%C3%BCrich", "zu%CC%88rich"), bodies, strict=True):
            answer = await client.post(
                f"/webhooks/{spelt}", content=body, headers=signed(body, CONNECT)
            )
            assert answer.status_code == 200, (spelt, answer.text)
        metrics = (await client.get("/metrics")).text
    records = await read_all(settings.kafka_bootstrap, settings.topic)
    assert sorted(r.value or b"" for r in records) == sorted(bodies)
    assert {r.headers["lattice-endpoint"] for r in records} == {composed.encode()}
    label = f'endpoint="{composed}",event_type="customer.subscription.updated"'
    assert f'{label},outcome="accepted"}} 2.0' in metrics


async def test_2000_concurrent_deliveries_each_land_exactly_once(settings: Settings) -> None:
    config = receiver_settings(settings, publish_timeout=30.0)
    events = [subscription_event(n) for n in range(2000)]
    async with running(config) as client:

        async def deliver(event: dict[str, Any]) -> int:
            body = encode(event)
            answer = await client.post(
                "/webhooks/platform", content=body, headers=signed(body, PLATFORM_NEW)
            )
            return answer.status_code

        statuses = await asyncio.gather(*(deliver(e) for e in events))
    assert Counter(statuses) == {200: len(events)}
    records = await read_all(settings.kafka_bootstrap, config.topic)
    on_topic = Counter(r.headers["stripe-event-id"].decode() for r in records)
    assert on_topic == Counter(e["id"] for e in events)


@given(key=st.binary(min_size=1, max_size=64), count=st.integers(1, 64))
def test_batches_go_where_kafkas_default_partitioner_puts_the_key(key: bytes, count: int) -> None:
    partitions = list(range(count))
    assert partition_for(key, partitions) == DefaultPartitioner()(key, partitions, partitions)
