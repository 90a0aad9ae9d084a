"""A Kafka that asks for SASL (a managed cluster, say): the receiver appends, the projectors
read and the tools provision topics through it, with LATTICE_KAFKA_SECURITY_PROTOCOL and
the user's name and password; a wrong password is a receiver that is not ready."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from deploy import kafka_options
from deploy.settings import Settings, load_settings
from deploy.stack import kafka
from deploy.stack.topics import ensure_topics
from projectors import catalog
from projectors.service import run_projections
from tests.integration.test_receiver import (
    PLATFORM_NEW,
    encode,
    receiver_settings,
    running,
    signed,
    subscription_event,
)
from tests.support.homes import server_home, share_kafka_jars
from tests.support.kafka import read_all
from tests.support.ports import free_port
from tests.support.wait import eventually

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USER, PASSWORD = "lattice", "s3cret-sasl"


@pytest.fixture(scope="module")
def sasl_bootstrap() -> Iterator[str]:
    """A private broker with a SASL_PLAINTEXT listener (PLAIN, one user) beside its
    plaintext one (which the stack's readiness check uses)."""
    with server_home("kafka-sasl") as home:
        port = free_port(3)
        sasl = port + 2
        listeners = {
            "PLAINTEXT": f"127.0.0.1:{port}",
            "CONTROLLER": f"127.0.0.1:{port + 1}",
            "SASL_PLAINTEXT": f"127.0.0.1:{sasl}",
        }
        jaas = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'user_{USER}="{PASSWORD}";'
        )
        extra = "\n".join(
            [
                "",
                "listeners=" + ",".join(f"{n}://{a}" for n, a in listeners.items()),
                "advertised.listeners="
                + ",".join(f"{n}://{a}" for n, a in listeners.items() if n != "CONTROLLER"),
                "listener.security.protocol.map="
                "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
                "sasl.enabled.mechanisms=PLAIN",
                f"listener.name.sasl_plaintext.plain.sasl.jaas.config={jaas}",
                "",
            ]
        )
        share_kafka_jars(home)
        kafka.start(home, port=port, partitions=1, timeout=90, extra_properties=extra)
        try:
            yield f"127.0.0.1:{sasl}"
        finally:
            kafka.stop(home)


@pytest.fixture
async def secured(sasl_bootstrap: str, settings: Settings) -> AsyncIterator[Settings]:
    """This test's settings against the SASL listener, as `load_settings` reads them from
    the environment (which is what configures every Kafka client of the process)."""
    overrides = {
        "kafka_bootstrap": sasl_bootstrap,
        "kafka_security_protocol": "SASL_PLAINTEXT",
        "kafka_sasl_username": USER,
        "kafka_sasl_password": PASSWORD,
        "topic": settings.topic,
        "usage_topic": settings.usage_topic,
        "database_url": settings.require_database_url(),
    }
    try:
        yield load_settings(overrides)
    finally:
        kafka_options.configure(Settings())  # the other tests' plaintext stack


async def test_receiver_projectors_and_tools_work_through_sasl(secured: Settings) -> None:
    await ensure_topics(
        secured.kafka_bootstrap,
        [secured.topic, secured.dlq_topic, secured.usage_topic],
        partitions=1,
    )
    event = subscription_event(1)
    body = encode(event)
    async with running(receiver_settings(secured)) as client:
        answer = await client.post(
            "/webhooks/platform", content=body, headers=signed(body, PLATFORM_NEW)
        )
        assert (answer.status_code, answer.json()) == (200, {"received": True})
    logged = await read_all(secured.kafka_bootstrap, secured.topic)
    assert [json.loads(r.value or b"")["id"] for r in logged] == [event["id"]]

    stop = asyncio.Event()
    task = asyncio.create_task(
        run_projections(secured, catalog.select(["events"]), stop=stop, handle_signals=False)
    )

    async def indexed() -> list[str]:
        conn = await asyncpg.connect(secured.require_database_url())
        try:
            return [r["id"] for r in await conn.fetch("SELECT id FROM projections.events")]
        except asyncpg.UndefinedTableError:
            return []
        finally:
            await conn.close()

    try:
        await eventually(indexed, lambda ids: ids == [event["id"]], timeout=60, what="indexed")
    finally:
        stop.set()
        await task


async def test_a_wrong_sasl_password_is_a_receiver_that_is_not_ready(
    secured: Settings,
) -> None:
    wrong = load_settings(
        {
            "kafka_bootstrap": secured.kafka_bootstrap,
            "kafka_security_protocol": "SASL_PLAINTEXT",
            "kafka_sasl_username": USER,
            "kafka_sasl_password": "not-the-password",
            "topic": secured.topic,
        }
    )
    body = encode(subscription_event(2))
    async with running(receiver_settings(wrong, publish_timeout=2.0)) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["message"] == "Kafka does not answer", ready.text
        answer = await client.post(
            "/webhooks/platform", content=body, headers=signed(body, PLATFORM_NEW)
        )
        assert answer.status_code == 503
        assert "Retry-After" in answer.headers
