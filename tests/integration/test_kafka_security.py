"""A Kafka that asks for SASL, TLS or both (a managed cluster, say): the receiver appends,
the projectors read and the tools provision topics through it, with
LATTICE_KAFKA_SECURITY_PROTOCOL, the user's name and password and the CA that signed the
broker's certificate; a wrong password or an untrusted certificate is a receiver that is
not ready."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from tests.support.tls import make_certificates
from tests.support.wait import eventually

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USER, PASSWORD = "lattice", "s3cret-sasl"


@dataclass(frozen=True)
class SecuredBroker:
    """A private broker's secured listeners, by security protocol, and the CA its TLS
    certificate chains to."""

    listeners: dict[str, str]
    ca: Path


@pytest.fixture(scope="module")
def secured_broker() -> Iterator[SecuredBroker]:
    """A private broker with SASL_PLAINTEXT (PLAIN, one user), SSL (a certificate for
    127.0.0.1 from a CA of the test's own) and SASL_SSL listeners beside its plaintext one
    (which the stack's readiness check uses)."""
    with server_home("kafka-secured") as home:
        certificates = make_certificates(home)
        port = free_port(5)
        listeners = {
            "PLAINTEXT": f"127.0.0.1:{port}",
            "CONTROLLER": f"127.0.0.1:{port + 1}",
            "SASL_PLAINTEXT": f"127.0.0.1:{port + 2}",
            "SSL": f"127.0.0.1:{port + 3}",
            "SASL_SSL": f"127.0.0.1:{port + 4}",
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
                + ",".join(f"{n}:{'PLAINTEXT' if n == 'CONTROLLER' else n}" for n in listeners),
                "sasl.enabled.mechanisms=PLAIN",
                f"listener.name.sasl_plaintext.plain.sasl.jaas.config={jaas}",
                f"listener.name.sasl_ssl.plain.sasl.jaas.config={jaas}",
                "ssl.keystore.type=PKCS12",
                f"ssl.keystore.location={certificates.keystore}",
                f"ssl.keystore.password={certificates.password}",
                f"ssl.key.password={certificates.password}",
                "",
            ]
        )
        share_kafka_jars(home)
        kafka.start(home, port=port, partitions=1, timeout=90, extra_properties=extra)
        try:
            yield SecuredBroker(
                {n: a for n, a in listeners.items() if n not in ("PLAINTEXT", "CONTROLLER")},
                certificates.ca,
            )
        finally:
            kafka.stop(home)


@pytest.fixture(params=["SASL_PLAINTEXT", "SSL", "SASL_SSL"])
async def secured(
    request: pytest.FixtureRequest, secured_broker: SecuredBroker, settings: Settings
) -> AsyncIterator[Settings]:
    """This test's settings against one secured listener, as `load_settings` reads them
    from the environment (which is what configures every Kafka client of the process)."""
    protocol: str = request.param
    overrides: dict[str, Any] = {
        "kafka_bootstrap": secured_broker.listeners[protocol],
        "kafka_security_protocol": protocol,
        "topic": settings.topic,
        "usage_topic": settings.usage_topic,
        "database_url": settings.require_database_url(),
    }
    if protocol.startswith("SASL_"):
        overrides |= {"kafka_sasl_username": USER, "kafka_sasl_password": PASSWORD}
    if protocol.endswith("SSL"):
        overrides["kafka_ssl_cafile"] = str(secured_broker.ca)
    try:
        yield load_settings(overrides)
    finally:
        kafka_options.configure(Settings())  # the other tests' plaintext stack


async def test_receiver_projectors_and_tools_work_through_a_secured_listener(
    secured: Settings,
) -> None:
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


async def test_wrong_credentials_are_a_receiver_that_is_not_ready(secured: Settings) -> None:
    """A wrong SASL password; on a TLS listener without SASL, a broker certificate whose
    CA the receiver was not given (LATTICE_KAFKA_SSL_CAFILE unset: the system's CAs)."""
    protocol = secured.kafka_security_protocol
    given: dict[str, Any] = {
        "kafka_bootstrap": secured.kafka_bootstrap,
        "kafka_security_protocol": protocol,
        "topic": secured.topic,
    }
    if protocol.startswith("SASL_"):
        given |= {"kafka_sasl_username": USER, "kafka_sasl_password": "not-the-password"}
        if protocol == "SASL_SSL":
            given["kafka_ssl_cafile"] = str(secured.kafka_ssl_cafile)
    wrong = load_settings(given)
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
