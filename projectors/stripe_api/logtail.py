"""Reading the event log for `lattice backfill`: its end offsets, and the ids of the
events a backfill appended since some time (to settle a run that was killed between
the broker's acknowledgement and the ledger's update)."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition

from deploy import kafka_options
from ingest.record import HEADER_EVENT_ID, HEADER_SOURCE
from projectors.topic_partitions import partitions_of

BACKFILL_SOURCE = b"backfill"


async def _consumer(bootstrap: str, topic: str) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    consumer = AIOKafkaConsumer(
        **kafka_options.options(),
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        client_id="lattice-backfill",
    )
    try:
        await consumer.start()
        tps = await partitions_of(consumer, [topic])
    except BaseException:  # an unknown topic, a broker that does not answer
        await consumer.stop()
        raise
    consumer.assign(tps)
    return consumer, tps


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """The next offset to be written, per partition."""
    consumer, tps = await _consumer(bootstrap, topic)
    try:
        ends = await consumer.end_offsets(tps)
        return {tp.partition: int(offset) for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def backfilled_since(bootstrap: str, topic: str, since_ms: int) -> set[str]:
    """Ids of events with `lattice-source: backfill` in records stamped `since_ms` or later."""
    consumer, tps = await _consumer(bootstrap, topic)
    try:
        ends = await consumer.end_offsets(tps)
        starts = await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
        remaining: set[TopicPartition] = set()
        for tp in tps:
            start = starts.get(tp)
            if start is not None and start.offset < ends[tp]:
                consumer.seek(tp, start.offset)
                remaining.add(tp)
        found: set[str] = set()
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for messages in batch.values():
                for message in messages:
                    headers = dict(message.headers)
                    if headers.get(HEADER_SOURCE) == BACKFILL_SOURCE:
                        found.add(headers.get(HEADER_EVENT_ID, b"").decode())
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return found
    finally:
        await consumer.stop()
