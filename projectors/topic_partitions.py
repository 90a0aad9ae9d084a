"""The partitions of topics, asked of the broker when aiokafka's metadata cache does not
know a topic yet (a consumer that has subscribed to nothing learns of no topic)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from deploy.settings import ConfigError

log = structlog.get_logger("lattice.projector")


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


async def check_stored_positions(
    consumer: AIOKafkaConsumer,
    projector: str,
    stored: Mapping[TopicPartition, int | None],
    said: set[tuple[TopicPartition, int, int]] | None = None,
) -> None:
    """ConfigError for a stored position past its partition's end (the topic deleted and
    created again, the broker's data lost): aiokafka would quietly start over from the
    log's start, and every new record below the stored position would be skipped.

    A warning for one below its partition's start (offsets deleted by a retention someone
    set on the topic, or by `kafka-delete-records`, before this projector read them):
    aiokafka goes on from the start, as it should, but the records among them are missing
    from the tables for good, which nobody would otherwise learn. Said at each start until
    a batch moves the position past the log's start; once per process for each position
    and start kept in `said` (else at every seek: a partition whose records were all
    deleted, which no batch moves past, would be said at every rebalance)."""
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
    try:
        starts = await consumer.beginning_offsets(list(held))
    except KafkaError:
        return  # as above: said at the next seek
    for tp, position in sorted(held.items()):
        if position < starts[tp] and (tp, position, starts[tp]) not in (said or ()):
            if said is not None:
                said.add((tp, position, starts[tp]))
            log.warning(
                "offsets deleted from the log before this projector read them",
                projector=projector,
                topic=tp.topic,
                partition=tp.partition,
                stored_position=position,
                log_start=starts[tp],
                offsets_deleted=starts[tp] - position,
                hint="the records among them (not transaction markers) are missing from the "
                "tables for good, and a replay cannot bring them back: keep the topic's "
                "retention.ms=-1, and delete no records from it",
            )
