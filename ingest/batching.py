"""Coalescing concurrent appends into one Kafka batch per partition.

aiokafka's `send()` costs ~60-90 µs of CPU per record (a coroutine, metadata checks and a
future per record), more than the rest of a webhook request together. Records that
arrive while the previous group is in flight are instead grouped by partition, appended
to a batch each (`create_batch`/`send_batch`, a few µs per record) and handed to the same
idempotent, `acks=all` producer. Each caller still gets its own future, resolved with its own
(partition, offset) when the broker acknowledges its batch, or failed with the batch.
Partitions are chosen exactly as Kafka's default partitioner does (murmur2 of the key),
so keys land where any other Kafka producer would put them.
"""

from __future__ import annotations

import asyncio
import struct
from collections import defaultdict
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from ingest.record import LogRecord

Ack = tuple[int, int]
# The queue is cleared of records nobody waits for when it reaches this length, and then
# whenever it doubles.
PRUNE_FROM = 1024
# While a partition's batch stays unanswered and the broker answers the others, the
# sender looks for records of those others this often.
STALL_S = 0.05


_M = 0x5BD1E995  # murmur2's mixing constant
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 of `data` (`org.apache.kafka.common.utils.Utils.murmur2`).

    The same function as `aiokafka.partitioner.murmur2`, which masks after every step
    and reads a byte at a time (~4 µs for an object id); this reads the 4-byte words in
    one `struct` call and masks only where a product can outgrow 32 bits.
    """
    length = len(data)
    words = length // 4
    h = 0x9747B28C ^ length
    for k in struct.unpack_from(f"<{words}I", data):
        k = (k * _M) & _MASK
        k = ((k ^ (k >> 24)) * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length - words * 4
    if rest:
        tail = words * 4
        if rest == 3:
            h ^= data[tail + 2] << 16
        if rest >= 2:
            h ^= data[tail + 1] << 8
        h = ((h ^ data[tail]) * _M) & _MASK
    h = ((h ^ (h >> 13)) * _M) & _MASK
    return h ^ (h >> 15)


def partition_for(key: bytes, partitions: list[int]) -> int:
    """Kafka's default partition of `key` among `partitions` (sorted ids)."""
    return partitions[int(murmur2(key) & 0x7FFFFFFF) % len(partitions)]


def lone_batch_size(record: LogRecord, codec: int) -> int:
    """The bytes of a batch holding `record` alone, compressed with `codec` as the
    producer compresses it: what the broker compares with a topic's `max.message.bytes`
    (a larger record is always sent alone, its batch being over the batch size)."""
    builder = DefaultRecordBatchBuilder(2, codec, 0, -1, -1, 0, 2**31 - 1)
    builder.append(
        0, timestamp=record.timestamp_ms, key=record.key, value=record.value, headers=record.headers
    )
    return len(builder.build())


class Batcher:
    """Sends what has queued as one batch per partition, one batch in flight per partition.

    While a group waits for the broker's acknowledgement, new records queue; when it is
    acknowledged (or failed), they go out together, but never sooner than `spacing`
    after the previous group was handed over. So under load a worker sends at most one
    produce request per `spacing` and a batch holds what arrived in that time (the broker
    and the producer work per request, not per record: fewer, larger batches leave more
    of the CPU to the deliveries themselves), while a delivery after a quiet spell is
    sent at once. Records keep their arrival order within a partition.

    A partition whose batch stays unanswered while the broker answers the others' (its
    leader away, too few replicas in sync) holds back its own records only, so one
    partition's trouble is not every delivery's 503. While nothing is answered (the broker
    away), nothing more is handed over: what the producer holds would be appended once the
    broker is back, though its callers were answered 503.
    """

    def __init__(self, producer: AIOKafkaProducer, topic: str, spacing: float) -> None:
        self.producer = producer
        self._topic = topic
        self._spacing = spacing
        self._pending: list[tuple[LogRecord, asyncio.Future[Ack]]] = []
        self._flushing: asyncio.Task[None] | None = None
        # The batch in flight of each partition that has one (the last handed over), with
        # how many batches had been answered when it was.
        self._busy: dict[int, tuple[asyncio.Future[Any], int]] = {}
        self._answered = 0
        self._last_sent = -spacing
        self._prune_at = PRUNE_FROM

    def add(self, record: LogRecord) -> asyncio.Future[Ack]:
        """Queue `record`; the future resolves to (partition, offset) once acknowledged."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Ack] = loop.create_future()
        self._pending.append((record, future))
        if len(self._pending) >= self._prune_at:
            # The group in flight is stuck (the broker is down: an idempotent producer
            # retries it for ever) and the queue behind it grows with every retry Stripe
            # makes. Those its callers gave up on (answered 503, or gone) are let go.
            self._pending = _waited_for(self._pending)
            self._prune_at = max(PRUNE_FROM, 2 * len(self._pending))
        self._start()
        return future

    def _start(self) -> None:
        """Run the sender unless it runs; its first step comes after this loop turn, so it
        takes along whatever else arrives in the turn."""
        if self._flushing is None and self._pending:
            self._flushing = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending or self._busy:
                wait = self._last_sent + self._spacing - loop.time()
                if self._pending and wait > 0:
                    await asyncio.sleep(wait)
                # Not what its caller gave up on: it was answered 503 and Stripe retries
                # it, so appending it now would only add a copy.
                items, self._pending = _waited_for(self._pending), []
                if items:
                    self._last_sent = loop.time()
                    # What waits for its partition's batch goes first next time.
                    self._pending = [*await self._flush(items), *self._pending]
                if self._busy:
                    # The next group waits for this one's answer: it grows meanwhile.
                    await asyncio.wait(
                        [sent for sent, _ in self._busy.values()],
                        timeout=STALL_S,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
        finally:
            self._flushing = None

    async def close(self) -> None:
        """Send what is queued and wait until the broker answered for every batch."""
        self._start()
        if self._flushing is not None:
            await self._flushing

    async def _flush(
        self, items: list[tuple[LogRecord, asyncio.Future[Ack]]]
    ) -> list[tuple[LogRecord, asyncio.Future[Ack]]]:
        """Hand `items` to the producer, one batch per partition, and return, in order,
        those of a partition with a batch in flight and those its batch had no room for."""
        busy = self._busy
        if any(answered == self._answered for _, answered in busy.values()):
            return items  # a batch handed over since the last answer is in flight
        handed: set[int] = set()
        held: list[tuple[LogRecord, asyncio.Future[Ack]]] = []
        try:
            partitions = sorted(await self.producer.partitions_for(self._topic))
            if not partitions:
                raise KafkaError(f"no partitions known for topic {self._topic}")
            groups: dict[int, list[tuple[LogRecord, asyncio.Future[Ack]]]] = defaultdict(list)
            for item in items:
                partition = partition_for(item[0].key, partitions)
                if partition in busy:
                    held.append(item)
                else:
                    groups[partition].append(item)
            for partition, group in groups.items():
                batch = self.producer.create_batch()
                members: list[asyncio.Future[Ack]] = []
                for index, (record, future) in enumerate(group):
                    if future.done():  # its caller gave up while we waited: a 503, retried
                        continue
                    if members and not _append(batch, record):
                        # Full: the rest waits for this batch's answer, as the next group
                        # does (a second batch here would wait for the producer's queue,
                        # and every other partition's batch with it).
                        held.extend(group[index:])
                        break
                    if not members:
                        _append(batch, record)  # a fresh batch always takes one record
                    members.append(future)
                await self._send(batch, partition, members, handed)
        except Exception as exc:  # every caller must hear of it: they answer 503
            for _, future in items:
                if id(future) not in handed and not future.done():
                    future.set_exception(exc)
            return []
        return held

    async def _send(
        self,
        batch: Any,
        partition: int,
        members: list[asyncio.Future[Ack]],
        handed: set[int],
    ) -> None:
        if not members:
            return
        sent: asyncio.Future[Any] = await self.producer.send_batch(
            batch, self._topic, partition=partition
        )
        handed.update(id(f) for f in members)
        self._busy[partition] = (sent, self._answered)

        def settle(done: asyncio.Future[Any]) -> None:
            self._answered += 1
            if self._busy.get(partition, (None,))[0] is done:
                del self._busy[partition]
            error = None if done.cancelled() else done.exception()
            for index, future in enumerate(members):
                if future.done():
                    continue
                if done.cancelled():
                    future.cancel()
                elif error is not None:
                    future.set_exception(error)
                else:
                    future.set_result((partition, int(done.result().offset) + index))

        sent.add_done_callback(settle)


def _waited_for(
    items: list[tuple[LogRecord, asyncio.Future[Ack]]],
) -> list[tuple[LogRecord, asyncio.Future[Ack]]]:
    return [item for item in items if not item[1].done()]


def _append(batch: Any, record: LogRecord) -> bool:
    metadata = batch.append(
        key=record.key, value=record.value, timestamp=record.timestamp_ms, headers=record.headers
    )
    return metadata is not None
