"""The partitions of topics, asked of the broker when aiokafka's metadata cache does not
know a topic yet (a consumer that has subscribed to nothing learns of no topic)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from deploy.settings import ConfigError


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


async def refuse_positions_past_the_end(
    consumer: AIOKafkaConsumer, projector: str, stored: Mapping[TopicPartition, int | None]
) -> None:
    """ConfigError for a stored position past its partition's end (the topic deleted and
    created again, the broker's data lost): aiokafka would quietly start over from the
    log's start, and every new record below the stored position would be skipped."""
    held = {tp: p for tp, p in stored.items() if p is not None}
    if not held:
        return
    try:
        ends = await consumer.end_offsets(list(held))
    except KafkaError:
        return  # a leader moving (OFFSET_NOT_AVAILABLE): no verdict now, never a false one
    past = sorted((tp.topic, tp.partition, p, ends[tp]) for tp, p in held.items() if p > ends[tp])
    if past:
        topic, partition, position, end = past[0]
        raise ConfigError(
            f"{projector}: the stored position {position} of {topic}:{partition} is past "
            f"the log's end {end} (the topic created again, or the broker's data lost?): "
            f"rebuild with `lattice replay {projector}`; its tables are as they were"
        )
