"""`lattice rewind GROUP`: move a stopped downstream consumer group back in the log.

Downstream services keep their positions in Kafka (unlike Lattice's projectors, whose
positions live in PostgreSQL and are rebuilt with `lattice replay`). Rewinding commits
new offsets for the group as a simple (generation -1) consumer; the broker refuses such
a commit while the group has live members, so a running group is never moved under its
own feet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from deploy import kafka_options
from projectors.topic_partitions import UnknownTopic, partitions_of


class RewindError(Exception):
    """The group cannot be rewound as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Move:
    """One partition's committed offset before and after the rewind."""

    partition: TopicPartition
    before: int | None
    after: int | None  # None: left alone (never committed there; see `rewind`)


async def committed(bootstrap: str, group: str) -> dict[TopicPartition, int]:
    """The offsets a group has committed, by partition."""
    admin = AIOKafkaAdminClient(**kafka_options.options(), bootstrap_servers=bootstrap)
    try:
        await admin.start()
        found = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp: meta.offset for tp, meta in found.items() if meta.offset >= 0}


async def rewind(
    bootstrap: str,
    group: str,
    *,
    topics: Sequence[str],
    since: datetime | None = None,
    to_offset: tuple[int, int] | None = None,
    new_group: bool = False,
) -> list[Move]:
    """Commit the group's new positions: the first record at or after `since` in every
    partition of `topics`, or `to_offset` (PARTITION:OFFSET) in the first topic. A group
    that has committed nothing is refused unless `new_group`: committing for a mistyped
    name would quietly create that group and leave the real one where it was."""
    if (since is None) == (to_offset is None):
        raise RewindError("give exactly one of --since TIME or --to-offset PARTITION:OFFSET")
    before = await committed(bootstrap, group)
    if not before and not new_group:
        raise RewindError(
            f"group {group} has no committed offsets on the broker: a mistyped name? "
            "(to give a new group its starting positions, add --new-group)"
        )
    consumer = AIOKafkaConsumer(
        **kafka_options.options(),
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        client_id="lattice-rewind",
    )
    try:
        await consumer.start()
        tps = await _partitions(consumer, topics)
        targets = await _targets(consumer, tps, topics, since, to_offset, before)
        untouched = []
        if since is not None and before and not new_group:
            # Never committed there (a partition added since): its consumer starts where
            # its auto.offset.reset says, maybe the beginning; `--since` could move it
            # forward. Left alone, as --new-group would not.
            untouched = [tp for tp in targets if tp not in before]
            targets = {tp: at for tp, at in targets.items() if tp in before}
            if not targets:
                raise RewindError(
                    f"group {group} has committed no offset on {', '.join(topics)}: "
                    "a mistyped --rewind-topic? (to give it positions there, add --new-group)"
                )
        consumer.assign(list(targets))
        try:
            await consumer.commit(
                {tp: OffsetAndMetadata(offset, "lattice rewind") for tp, offset in targets.items()}
            )
        except KafkaError as exc:
            raise RewindError(
                f"the broker refused to move group {group} ({type(exc).__name__}): "
                "it probably has running members; stop them and retry"
            ) from exc
    finally:
        await consumer.stop()
    moves = [Move(tp, before.get(tp), offset) for tp, offset in targets.items()]
    moves += [Move(tp, None, None) for tp in untouched]
    return sorted(moves, key=lambda move: move.partition)


async def _partitions(consumer: AIOKafkaConsumer, topics: Sequence[str]) -> list[TopicPartition]:
    try:
        return await partitions_of(consumer, topics)
    except UnknownTopic as exc:
        raise RewindError(str(exc)) from None


async def _targets(
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    topics: Sequence[str],
    since: datetime | None,
    to_offset: tuple[int, int] | None,
    before: Mapping[TopicPartition, int],
) -> dict[TopicPartition, int]:
    ends = await consumer.end_offsets(tps)
    if since is not None:
        ms = int(since.timestamp() * 1000)
        found = await consumer.offsets_for_times(dict.fromkeys(tps, ms))
        starts = await consumer.beginning_offsets(tps)
        # No record at or after `since`: the group starts at the end (nothing to re-read).
        # Never forward: a group still behind `since` on a partition would skip what it
        # has not read yet; but never before the log's start either (retention deleted
        # that), where the group's consumer would reset, to the end by default.
        return {
            tp: min(
                found[tp].offset if found.get(tp) else ends[tp],
                max(before.get(tp, ends[tp]), starts[tp]),
            )
            for tp in tps
        }
    assert to_offset is not None
    partition, offset = to_offset
    tp = TopicPartition(topics[0], partition)
    if tp not in ends:
        raise RewindError(f"topic {topics[0]} has no partition {partition}")
    start = (await consumer.beginning_offsets([tp]))[tp]
    if not start <= offset <= ends[tp]:
        raise RewindError(
            f"offset {offset} is outside {tp.topic}:{partition}, which holds {start}..{ends[tp]}"
        )
    return {tp: offset}
