"""Reading whole topics back, for assertions on what the receiver or a projector wrote."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from deploy import kafka_options
from projectors.topic_partitions import partitions_of

EMPTY_POLLS = 15


@dataclass(frozen=True)
class ReadRecord:
    """One record as it sits on the topic."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    timestamp_ms: int


async def read_all(
    bootstrap: str, topic: str, *, timeout_ms: int = 2000, missing_ok: bool = False
) -> list[ReadRecord]:
    """Every record of `topic` from the beginning to the current end, by partition and
    offset. A topic that does not exist is an AssertionError unless `missing_ok`: "nothing
    was written" must not pass because the records went to another topic. So is a topic
    that yields nothing more for 15 polls of `timeout_ms` in a row, short of its end (one
    empty poll may only be a busy machine)."""
    consumer = AIOKafkaConsumer(
        **kafka_options.options(),
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        tps = await partitions_of(consumer, [topic], missing_ok=True)
        if not tps:
            assert missing_ok, f"topic {topic} does not exist"
            return []
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[ReadRecord] = []
        # A partition whose records were all deleted starts at its end: nothing to fetch.
        remaining = {tp for tp in tps if await consumer.position(tp) < ends[tp]}
        empty = 0
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=timeout_ms)
            empty = 0 if batch else empty + 1
            if empty == EMPTY_POLLS:
                raise AssertionError(f"topic {topic} stopped short of its end offsets {ends}")
            for tp, msgs in batch.items():
                for msg in msgs:
                    records.append(
                        ReadRecord(
                            msg.partition,
                            msg.offset,
                            msg.key,
                            msg.value,
                            dict(msg.headers),
                            msg.timestamp,
                        )
                    )
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        await consumer.stop()


async def delete_records_before(bootstrap: str, tp: TopicPartition, offset: int) -> None:
    """Move `tp`'s log start to `offset`, as a retention deleting the records before it
    would (`kafka-delete-records`)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_records({tp: RecordsToDelete(offset)})
    finally:
        await admin.close()
