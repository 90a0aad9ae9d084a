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

from ingest.record import LogRecord

Ack = tuple[int, int]
# The queue is cleared of records nobody waits for when it reaches this length, and then
# whenever it doubles.
PRUNE_FROM = 1024


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


class Batcher:
    """Sends what has queued as one batch per partition, one group in flight at a time.

    While a group waits for the broker's acknowledgement, new records queue; when it is
    acknowledged (or failed), they go out together, but never sooner than `spacing`
    after the previous group was handed over. So under load a worker sends at most one
    produce request per `spacing` and a batch holds what arrived in that time (the broker
    and the producer work per request, not per record: fewer, larger batches leave more
    of the CPU to the deliveries themselves), while a delivery after a quiet spell is
    sent at once. Records keep their arrival order within a partition.
    """

    def __init__(self, producer: AIOKafkaProducer, topic: str, spacing: float) -> None:
        self.producer = producer
        self._topic = topic
        self._spacing = spacing
        self._pending: list[tuple[LogRecord, asyncio.Future[Ack]]] = []
        self._flushing: asyncio.Task[None] | None = None
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
            while self._pending:
                wait = self._last_sent + self._spacing - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                # Not what its caller gave up on: it was answered 503 and Stripe retries
                # it, so appending it now would only add a copy.
                items, self._pending = _waited_for(self._pending), []
                self._last_sent = loop.time()
                sent = await self._flush(items)
                if sent:
                    # The next group waits for this one's answer: it grows meanwhile.
                    await asyncio.wait(sent)
        finally:
            self._flushing = None

    async def close(self) -> None:
        """Send what is queued and wait until the broker answered for every batch."""
        self._start()
        if self._flushing is not None:
            await self._flushing

    async def _flush(
        self, items: list[tuple[LogRecord, asyncio.Future[Ack]]]
    ) -> list[asyncio.Future[Any]]:
        """Hand `items` to the producer; the futures of the batches it took."""
        handed: set[int] = set()
        sent: list[asyncio.Future[Any] | None] = []
        try:
            partitions = sorted(await self.producer.partitions_for(self._topic))
            if not partitions:
                raise KafkaError(f"no partitions known for topic {self._topic}")
            groups: dict[int, list[tuple[LogRecord, asyncio.Future[Ack]]]] = defaultdict(list)
            for item in items:
                groups[partition_for(item[0].key, partitions)].append(item)
            for partition, group in groups.items():
                batch = self.producer.create_batch()
                members: list[asyncio.Future[Ack]] = []
                for record, future in group:
                    if future.done():  # its caller gave up while we waited: a 503, retried
                        continue
                    if not _append(batch, record):
                        sent.append(await self._send(batch, partition, members, handed))
                        batch, members = self.producer.create_batch(), []
                        _append(batch, record)  # a fresh batch always takes one record
                    members.append(future)
                sent.append(await self._send(batch, partition, members, handed))
        except Exception as exc:  # every caller must hear of it: they answer 503
            for _, future in items:
                if id(future) not in handed and not future.done():
                    future.set_exception(exc)
        return [future for future in sent if future is not None]

    async def _send(
        self,
        batch: Any,
        partition: int,
        members: list[asyncio.Future[Ack]],
        handed: set[int],
    ) -> asyncio.Future[Any] | None:
        if not members:
            return None
        sent: asyncio.Future[Any] = await self.producer.send_batch(
            batch, self._topic, partition=partition
        )
        handed.update(id(f) for f in members)

        def settle(done: asyncio.Future[Any]) -> None:
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
        return sent


def _waited_for(
    items: list[tuple[LogRecord, asyncio.Future[Ack]]],
) -> list[tuple[LogRecord, asyncio.Future[Ack]]]:
    return [item for item in items if not item[1].done()]


def _append(batch: Any, record: LogRecord) -> bool:
    metadata = batch.append(
        key=record.key, value=record.value, timestamp=record.timestamp_ms, headers=record.headers
    )
    return metadata is not None
