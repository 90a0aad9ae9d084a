"""Hostile deliveries against the whole receiver, in process, over a real topic.

Hypothesis builds a corpus of deliveries that must all be refused — garbage signed with
the real secret, signatures for another body, expired or forged signatures, absurd
headers, unknown endpoints, bodies over the limit — and the app answers each one. Every
answer must be a 4xx, nothing may reach the topic, and no secret or body may show up in
a log line, a metrics label or an error body. One genuine delivery at the end proves the
topic was writable all along.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from deploy.settings import Settings
from ingest.app import create_app
from ingest.signature import sign_header
from tests.fixtures.stripe_objects import event, invoice, subscription
from tests.fuzz.conftest import fuzz_settings
from tests.fuzz.strategies import json_values, malformed_json, with_duplicate_keys
from tests.support.kafka import read_all

pytestmark = pytest.mark.integration

SECRET = "whsec_" + secrets.token_hex(16)
CONNECT_SECRET = "whsec_" + secrets.token_hex(16)
ROGUE_SECRET = "whsec_" + secrets.token_hex(16)
LIMIT = 16 * 1024
CANARY = "canary-" + secrets.token_hex(8)  # put in every body; must never be logged
CONCURRENCY = 64
JSON = "application/json"
SIGNATURE = b"stripe-signature"


@dataclass(frozen=True)
class Delivery:
    """One request and the answers it may get."""

    kind: str
    path: str
    body: bytes
    headers: dict[bytes, bytes]
    allowed: frozenset[int]


def _genuine(n: int) -> dict[str, Any]:
    obj = subscription() if n % 2 else invoice(subscription="sub_1")
    obj["metadata"] = {"note": CANARY}
    return event("customer.subscription.updated" if n % 2 else "invoice.paid", obj)


def _signature(body: bytes, secret: str = SECRET, at: int | None = None) -> dict[bytes, bytes]:
    return {SIGNATURE: sign_header(body, secret, at or int(time.time())).encode()}


BAD_REQUEST = frozenset({400})


@st.composite
def hostile(draw: st.DrawFn) -> Delivery:
    """One delivery the receiver must refuse, of a kind chosen by hypothesis."""
    kind = draw(
        st.sampled_from(
            [
                "signed_garbage",
                "signed_json_not_event",
                "duplicate_key_unmakes_event",
                "signed_for_another_body",
                "wrong_secret",
                "expired",
                "from_the_future",
                "garbage_header",
                "absurd_header",
                "unknown_endpoint",
                "too_large",
            ]
        )
    )
    genuine = _genuine(draw(st.integers(0, 1)))
    body = json.dumps(genuine).encode()
    path = "/webhooks/platform"
    headers: dict[bytes, bytes]
    allowed = BAD_REQUEST
    if kind == "signed_garbage":
        body = draw(malformed_json())
        headers = _signature(body)
    elif kind == "signed_json_not_event":
        body = json.dumps({"note": CANARY, "value": draw(json_values)}).encode()
        headers = _signature(body)
    elif kind == "duplicate_key_unmakes_event":
        key, value = draw(
            st.sampled_from([("object", "customer"), ("id", "cus_1"), ("type", ""), ("id", 7)])
        )
        body = with_duplicate_keys(genuine, key, value)
        headers = _signature(body)
    elif kind == "signed_for_another_body":
        other = draw(st.binary(max_size=64))
        headers = _signature(body + other + b" ")
    elif kind == "wrong_secret":
        headers = _signature(body, draw(st.sampled_from([ROGUE_SECRET, CONNECT_SECRET, ""])))
    elif kind in ("expired", "from_the_future"):
        # Beyond the 300 s tolerance by an hour, which outlasts building and sending the corpus.
        skew = draw(st.integers(300 + 3600, 10**9))
        at = int(time.time()) + (skew if kind == "from_the_future" else -skew)
        headers = _signature(body, at=at)
    elif kind == "garbage_header":
        headers = {SIGNATURE: draw(st.binary(max_size=200))}
    elif kind == "absurd_header":
        size = draw(st.integers(10_000, 200_000))
        real = _signature(body)[SIGNATURE]
        headers = {SIGNATURE: b"v1=" + b"f" * size + b"," + real.replace(b"v1=", b"v0=")}
    elif kind == "unknown_endpoint":
        name = draw(st.text(min_size=1, max_size=40).filter(lambda s: s not in ("platform",)))
        path = "/webhooks/" + quote(name, safe="")
        headers = _signature(body)
        allowed = frozenset({404, 405})
        if name == "connect":
            headers = _signature(body, CONNECT_SECRET + "x")
            allowed = BAD_REQUEST
    else:  # too_large: genuinely signed, but over the limit
        padding = draw(st.integers(1, 4 * LIMIT))
        genuine["data"]["object"]["metadata"]["padding"] = "x" * (LIMIT + padding)
        body = json.dumps(genuine).encode()
        headers = _signature(body)
        allowed = frozenset({413})
    if kind in ("signed_garbage", "signed_json_not_event") and len(body) > LIMIT:
        allowed = frozenset({413})  # a deep or long document: over the limit comes first
    return Delivery(kind, path, body, headers, allowed)


def corpus(count: int, cases: Counter[str]) -> list[Delivery]:
    """`count` hostile deliveries generated by hypothesis."""
    made: list[Delivery] = []

    @fuzz_settings(count)
    @given(delivery=hostile())
    def collect(delivery: Delivery) -> None:
        made.append(delivery)

    collect()
    for delivery in made:
        cases[f"receiver: {delivery.kind}"] += 1
    return made


async def test_hostile_deliveries_get_4xx_and_write_nothing(
    settings: Settings, cases: Counter[str], caplog: pytest.LogCaptureFixture
) -> None:
    pairs = f"platform={SECRET},connect={CONNECT_SECRET}"
    config = settings.model_copy(
        update={"webhook_secrets": SecretStr(pairs), "max_body_bytes": LIMIT}
    )
    deliveries = corpus(2000, cases)
    assert len({d.kind for d in deliveries}) >= 10, "hypothesis drew too few kinds"
    caplog.set_level(logging.INFO)  # production logs the standard library at WARNING
    app = create_app(config)
    answers: list[tuple[Delivery, httpx.Response]] = []
    with structlog.testing.capture_logs() as log_lines:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://receiver"
            ) as client,
        ):
            metrics_before = (await client.get("/metrics")).text
            gate = asyncio.Semaphore(CONCURRENCY)

            async def send(delivery: Delivery) -> None:
                async with gate:
                    answer = await client.post(
                        delivery.path, content=delivery.body, headers=delivery.headers
                    )
                answers.append((delivery, answer))

            await asyncio.gather(*(send(d) for d in deliveries))
            metrics_after = (await client.get("/metrics")).text
            wrong = [
                (d.kind, a.status_code, d.headers, d.body[:300])
                for d, a in answers
                if a.status_code not in d.allowed
            ]
            assert not wrong, f"{len(wrong)} unexpected answers, first: {wrong[:3]}"
            assert (await read_all(config.kafka_bootstrap, config.topic)) == []

            genuine = json.dumps(_genuine(0)).encode()
            control = await client.post(
                "/webhooks/platform", content=genuine, headers=_signature(genuine)
            )
            assert control.status_code == 200, control.text

    records = await read_all(config.kafka_bootstrap, config.topic)
    assert [r.value for r in records] == [genuine], "only the genuine delivery is on the log"

    # Nothing secret and no body in any output: logs, metrics, error bodies.
    outputs = [
        repr(log_lines),
        caplog.text,
        metrics_after,
        *(answer.text for _, answer in answers),
    ]
    # Every delivery the app answered logs one line: the handler's answers, and the
    # routing refusals under /webhooks (a 404 for `/webhooks/a/b` or a trailing slash).
    handled = sum(1 for _, answer in answers if _answered_by_the_app(answer)) + 1
    webhook_lines = [line for line in log_lines if line["event"] == "webhook"]
    assert len(webhook_lines) == handled
    for text in outputs:
        for secret in (SECRET, CONNECT_SECRET, ROGUE_SECRET, CANARY):
            assert secret not in text
    # Hostile input must not grow the metrics: unknown endpoints share one label.
    growth = len(metrics_after.splitlines()) - len(metrics_before.splitlines())
    assert growth < 200, f"metrics grew by {growth} lines under hostile input"


def _answered_by_the_app(answer: httpx.Response) -> bool:
    """True for answers the app gave (its short JSON), not the HTTP server's own."""
    return bool(answer.headers.get("content-type") == JSON)
