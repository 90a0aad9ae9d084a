"""The partitions of topics, asked of the broker when aiokafka's metadata cache does not
know a topic yet (a consumer that has subscribed to nothing learns of no topic)."""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition


class UnknownTopic(LookupError):
    """The broker has no such topic (or it has no partitions)."""


async def partitions_of(
    consumer: AIOKafkaConsumer, topics: Sequence[str], *, missing_ok: bool = False
) -> list[TopicPartition]:
    """Every partition of `topics`, sorted; UnknownTopic for one the broker does not have
    (skipped instead with `missing_ok`)."""
    found: list[TopicPartition] = []
    refreshed = False
    for topic in topics:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions and not refreshed:
            await consumer._client.force_metadata_update()
            refreshed = True
            partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            if missing_ok:
                continue
            raise UnknownTopic(f"topic {topic} does not exist")
        found += [TopicPartition(topic, p) for p in sorted(partitions)]
    return found
