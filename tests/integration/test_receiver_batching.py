"""How deliveries are grouped into Kafka batches: one batch in flight per partition, spaced."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from deploy.settings import Settings
from ingest.batching import Batcher, partition_for
from ingest.publisher import MAX_BATCH_BYTES
from ingest.record import LogRecord, build_received
from tests.integration.test_receiver import subscription_event
from tests.support.kafka import read_all

pytestmark = pytest.mark.integration


class Watched:
    """The real producer, with a note of each batch handed over and when it was answered."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self.events: list[str] = []  # "sent" and "acked", in the order they happened
        self.sent_at: list[float] = []  # loop time of each batch handed over
        self.handed = asyncio.Event()

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Any:
        self.events.append("sent")
        self.sent_at.append(asyncio.get_running_loop().time())
        self.handed.set()
        future = await self.producer.send_batch(batch, topic, partition=partition)
        future.add_done_callback(lambda _: self.events.append("acked"))
        return future

    def __getattr__(self, name: str) -> Any:
        return getattr(self.producer, name)


def receiver_producer(settings: Settings) -> AIOKafkaProducer:
    # Batches as large as the receiver's: each partition's share of the records fits in
    # one, wherever their random ids send them (with aiokafka's 16 KB default it may not).
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_idempotence=True,
        acks="all",
        max_batch_size=MAX_BATCH_BYTES,
    )


def received(count: int) -> list[LogRecord]:
    events = [subscription_event(n) for n in range(count)]
    return [
        build_received(orjson.dumps(e), e, endpoint="platform", received_ms=1_764_000_000_000)
        for e in events
    ]


async def test_what_arrives_during_a_round_trip_goes_out_together(settings: Settings) -> None:
    producer = receiver_producer(settings)
    await producer.start()
    records = received(41)
    watched = Watched(producer)
    try:
        batcher = Batcher(watched, settings.topic, spacing=0)
        first = batcher.add(records[0])
        await watched.handed.wait()  # the lone record is handed over at once
        rest = [batcher.add(record) for record in records[1:]]
        acks = await asyncio.gather(first, *rest)
        await batcher.close()
    finally:
        await producer.stop()
    # The forty that came while the first was in flight waited for its answer, then
    # went together: one batch per partition they fall in.
    assert watched.events[:2] == ["sent", "acked"]
    assert 2 <= watched.events.count("sent") <= 1 + settings.partitions
    # Each caller got its own position, and they are the records' real positions.
    on_topic = await read_all(settings.kafka_bootstrap, settings.topic)
    where = {(r.partition, r.offset): r.value for r in on_topic}
    assert len(set(acks)) == len(records) == len(on_topic)
    assert [where[ack] for ack in acks] == [r.value for r in records]


async def test_batches_go_at_least_the_spacing_apart_and_a_lone_one_at_once(
    settings: Settings,
) -> None:
    spacing = 1.0  # wide: "at once" below includes a broker round trip on a busy machine
    producer = receiver_producer(settings)
    await producer.start()
    records = received(12)
    watched = Watched(producer)
    loop = asyncio.get_running_loop()
    try:
        batcher = Batcher(watched, settings.topic, spacing=spacing)
        added = loop.time()
        await batcher.add(records[0])  # answered: nothing is in flight any more
        busy = [batcher.add(record) for record in records[1:11]]
        await asyncio.gather(*busy)
        await asyncio.sleep(spacing)  # a quiet spell
        quiet_added = loop.time()
        await batcher.add(records[11])
        await batcher.close()
    finally:
        await producer.stop()
    first, *group, last = watched.sent_at
    # The first delivery and the one after the quiet spell were not held back ...
    assert first - added < spacing
    assert last - quiet_added < spacing
    # ... while those that came right after an answer waited for the spacing to pass
    # (counted from when the first group was formed, a moment before it was handed over).
    assert group
    assert min(group) >= first + spacing - 0.01
    on_topic = await read_all(settings.kafka_bootstrap, settings.topic)
    assert sorted(r.value or b"" for r in on_topic) == sorted(r.value for r in records)


class GivenUpDuringLookup(Watched):
    """The real producer; while the topic's partitions are looked up (which waits for
    metadata when the broker is slow), some callers stop waiting and are answered 503."""

    def __init__(self, producer: AIOKafkaProducer, give_up: list[asyncio.Future[Any]]) -> None:
        super().__init__(producer)
        self.give_up = give_up

    async def partitions_for(self, topic: str) -> Any:
        found = await self.producer.partitions_for(topic)
        for future in self.give_up:
            future.set_exception(TimeoutError())  # what the publisher's deadline does
        return found


async def test_a_record_whose_caller_gave_up_before_its_batch_formed_is_not_appended(
    settings: Settings,
) -> None:
    """Its caller answered 503 and Stripe sends it again: appending it anyway would only
    put a copy on the log."""
    producer = receiver_producer(settings)
    await producer.start()
    records = received(6)
    give_up: list[asyncio.Future[Any]] = []
    try:
        batcher = Batcher(GivenUpDuringLookup(producer, give_up), settings.topic, spacing=0)
        futures = [batcher.add(record) for record in records]
        give_up.extend(futures[::2])
        answers = await asyncio.gather(*futures, return_exceptions=True)
        await batcher.close()
    finally:
        await producer.stop()
    assert [isinstance(a, TimeoutError) for a in answers] == [True, False] * 3
    on_topic = await read_all(settings.kafka_bootstrap, settings.topic)
    assert sorted(r.value or b"" for r in on_topic) == sorted(r.value for r in records[1::2])
    where = {(r.partition, r.offset): r.value for r in on_topic}
    acked = [a for a in answers[1::2] if not isinstance(a, BaseException)]
    assert [where[a] for a in acked] == [r.value for r in records[1::2]]


class OverlapWatched(Watched):
    """The real producer, noting each batch handed over for a partition whose batch
    before is still unanswered (aiokafka's `send_batch` then waits for that answer, and
    the other partitions' batches behind it)."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        super().__init__(producer)
        self.unanswered: dict[int, asyncio.Future[Any]] = {}
        self.overlaps: list[int] = []

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Any:
        if partition in self.unanswered and not self.unanswered[partition].done():
            self.overlaps.append(partition)
        future = await super().send_batch(batch, topic, partition=partition)
        self.unanswered[partition] = future
        return future


async def test_a_partition_with_more_than_a_batch_queued_sends_one_batch_at_a_time(
    settings: Settings,
) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_idempotence=True,
        acks="all",
        max_batch_size=16_384,
    )
    await producer.start()
    watched = OverlapWatched(producer)
    try:
        partitions = sorted(await producer.partitions_for(settings.topic))
        busy = partition_for(received(1)[0].key, partitions)
        records = [r for r in received(2000) if partition_for(r.key, partitions) == busy][:150]
        assert sum(len(r.value) for r in records) > 4 * 16_384  # several batches' worth
        batcher = Batcher(watched, settings.topic, spacing=0)
        acks = await asyncio.gather(*[batcher.add(record) for record in records])
        await batcher.close()
    finally:
        await producer.stop()
    assert watched.events.count("sent") >= 3
    assert watched.overlaps == []
    # In arrival order, each at its own position.
    assert [offset for _, offset in acks] == sorted(offset for _, offset in acks)
    on_topic = await read_all(settings.kafka_bootstrap, settings.topic)
    where = {(r.partition, r.offset): r.value for r in on_topic}
    assert [where[ack] for ack in acks] == [r.value for r in records]


class OnePartitionUnanswered(Watched):
    """The real producer, but batches for `stuck` are held and never answered (its
    leader away, or too few replicas in sync: an idempotent producer retries for ever)."""

    def __init__(self, producer: AIOKafkaProducer, stuck: int) -> None:
        super().__init__(producer)
        self.stuck = stuck
        self.held: list[asyncio.Future[Any]] = []

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Any:
        if partition != self.stuck:
            return await super().send_batch(batch, topic, partition=partition)
        self.events.append("sent")
        self.handed.set()
        held: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.held.append(held)
        return held


async def test_a_partition_left_unanswered_holds_back_only_its_own_records(
    settings: Settings,
) -> None:
    """Before, the next group waited for every batch of the one before: one partition
    without a leader made every delivery wait, and answered 503."""
    producer = receiver_producer(settings)
    await producer.start()
    records = received(60)
    partitions = sorted(await producer.partitions_for(settings.topic))
    stuck = partition_for(records[0].key, partitions)
    wrapped = OnePartitionUnanswered(producer, stuck)
    # The first group: the stuck partition's batch and another's, which is answered.
    healthy = next(r for r in records if partition_for(r.key, partitions) != stuck)
    try:
        batcher = Batcher(wrapped, settings.topic, spacing=0.002)
        first = batcher.add(records[0])
        answered = batcher.add(healthy)
        await asyncio.wait_for(answered, timeout=10)
        rest = {r.key: batcher.add(r) for r in records[1:] if r is not healthy}
        others = [f for key, f in rest.items() if partition_for(key, partitions) != stuck]
        held = [f for key, f in rest.items() if partition_for(key, partitions) == stuck]
        assert others
        assert held
        # The others are appended while the stuck partition's first batch is unanswered.
        acks = await asyncio.wait_for(asyncio.gather(*others), timeout=10)
        assert all(partition != stuck for partition, _ in acks)
        assert not first.done()
        assert not any(f.done() for f in held)
        assert len(wrapped.held) == 1  # its later records wait for its batch, in order
        for future in [first, *held]:
            future.cancel()  # what the publisher's deadline does, in effect
        wrapped.held[0].cancel()
        await batcher.close()
    finally:
        await producer.stop()
    on_topic = await read_all(settings.kafka_bootstrap, settings.topic)
    assert len(on_topic) == len(others) + 1
    assert stuck not in {r.partition for r in on_topic}


async def test_while_the_broker_answers_nothing_nothing_more_is_handed_over(
    settings: Settings,
) -> None:
    """Broker away: the first batch stays with the producer (appended once the broker is
    back, though its caller was answered 503); the records after it are not handed over,
    whatever their partition, so no more such copies pile up."""
    producer = receiver_producer(settings)
    await producer.start()
    records = received(40)
    partitions = sorted(await producer.partitions_for(settings.topic))
    stuck = partition_for(records[0].key, partitions)
    wrapped = OnePartitionUnanswered(producer, stuck)
    try:
        batcher = Batcher(wrapped, settings.topic, spacing=0.002)
        first = batcher.add(records[0])
        await wrapped.handed.wait()
        rest = [batcher.add(record) for record in records[1:]]
        await asyncio.sleep(0.5)  # ten times STALL_S
        assert wrapped.events == ["sent"]
        assert not any(f.done() for f in [first, *rest])
        for future in [first, *rest]:
            future.cancel()
        wrapped.held[0].cancel()
        await batcher.close()
    finally:
        await producer.stop()
    assert await read_all(settings.kafka_bootstrap, settings.topic) == []
