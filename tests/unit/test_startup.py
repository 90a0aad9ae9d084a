"""What `lattice project` waits for before it starts, and what ends the wait at once."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError

from projectors import startup


@pytest.mark.parametrize(
    "down",
    [
        # The bootstrap address answered, the brokers its metadata names did not (a broker
        # restarting, an advertised listener not reachable yet): aiokafka's bare error.
        KafkaError("Unable to get cluster metadata over all known brokers"),
        UnknownTopicOrPartitionError(),
        ConnectionRefusedError(111, "Connection refused"),
        startup.MissingTopics("no topic stripe.events on the broker yet"),
    ],
    ids=lambda exc: type(exc).__name__,
)
async def test_kafka_not_answering_yet_is_waited_for(
    down: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(startup, "FIRST_RETRY_S", 0.001)
    tries = 0

    async def attempt() -> None:
        nonlocal tries
        tries += 1
        if tries < 3:
            raise down

    assert await startup.until_up("Kafka", attempt, startup._kafka_down, asyncio.Event())
    assert tries == 3


async def test_a_fault_no_wait_mends_ends_the_wait_at_once() -> None:
    async def attempt() -> None:
        raise ValueError("bootstrap_servers: not a host:port")

    with pytest.raises(ValueError, match="host:port"):
        await startup.until_up("Kafka", attempt, startup._kafka_down, asyncio.Event())
