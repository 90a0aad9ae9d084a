"""Dead letters: records a projector gave up on, sent to `<topic>.dlq` with why and where.

The record keeps its key, value and headers and gains `lattice-error`,
`lattice-projector`, `lattice-origin-topic`, `lattice-origin-partition` and
`lattice-origin-offset`. Each is also written to `lattice.dead_letters` in the
transaction that moves the position past it, so `lattice status` can count them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import asyncpg
from aiokafka import AIOKafkaProducer

from projectors.base import Connection, Record

HEADER_ERROR = "lattice-error"
HEADER_PROJECTOR = "lattice-projector"
HEADER_ORIGIN_TOPIC = "lattice-origin-topic"
HEADER_ORIGIN_PARTITION = "lattice-origin-partition"
HEADER_ORIGIN_OFFSET = "lattice-origin-offset"
# Kafka headers are small by convention; a traceback-sized message helps nobody.
MAX_ERROR_CHARS = 2000


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record a projector could not apply, and why."""

    projector: str
    record: Record
    error: str


def headers_for(letter: DeadLetter) -> list[tuple[str, bytes]]:
    """The original headers plus the dead-letter headers (pure)."""
    record = letter.record
    ours = {
        HEADER_ERROR: letter.error[:MAX_ERROR_CHARS].encode(),
        HEADER_PROJECTOR: letter.projector.encode(),
        HEADER_ORIGIN_TOPIC: record.topic.encode(),
        HEADER_ORIGIN_PARTITION: str(record.partition).encode(),
        HEADER_ORIGIN_OFFSET: str(record.offset).encode(),
    }
    kept = [(k, v) for k, v in record.headers.items() if k not in ours]
    return [*kept, *ours.items()]


class DeadLetterSink(Protocol):
    """Where dead letters go; `send` returns once they are durably written, with how
    many it wrote."""

    async def send(self, letters: Sequence[DeadLetter]) -> int: ...


class KafkaDeadLetters:
    """Dead letters produced to the dead-letter topic (acks=all, idempotent)."""

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self._producer = producer
        self.topic = topic

    async def send(self, letters: Sequence[DeadLetter]) -> int:
        """Produce every letter and wait until the broker acknowledged each one."""
        futures = [
            await self._producer.send(
                self.topic,
                value=letter.record.value,
                key=letter.record.key,
                headers=headers_for(letter),
            )
            for letter in letters
        ]
        for future in futures:
            await future
        return len(futures)


async def record(conn: Connection, letters: Sequence[DeadLetter]) -> None:
    """Note the letters in `lattice.dead_letters`, in the caller's transaction."""
    await conn.executemany(
        "INSERT INTO lattice.dead_letters (projector, topic, partition, kafka_offset, error) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        [
            (
                lt.projector,
                lt.record.topic,
                lt.record.partition,
                lt.record.offset,
                lt.error[:MAX_ERROR_CHARS],
            )
            for lt in letters
        ],
    )


class UnsentDeadLetters:
    """Records are applied again after their dead letters were sent: by a replay, by the
    live runner after a replay's swap moved its positions back, after a restore. Send
    only the letters `lattice.dead_letters` does not know yet. (A crash between sending
    and committing still sends one twice: consumers of the dead-letter topic can tell by
    its projector and origin headers.)"""

    def __init__(self, sink: DeadLetterSink, pool: asyncpg.Pool) -> None:
        self.sink = sink
        self.pool = pool

    async def send(self, letters: Sequence[DeadLetter]) -> int:
        async with self.pool.acquire() as conn:
            known = {
                (r["topic"], r["partition"], r["kafka_offset"])
                for r in await conn.fetch(
                    "SELECT d.topic, d.partition, d.kafka_offset FROM lattice.dead_letters d "
                    "JOIN unnest($2::text[], $3::integer[], $4::bigint[]) AS u(t, p, o) "
                    "ON (d.topic, d.partition, d.kafka_offset) = (u.t, u.p, u.o) "
                    "WHERE d.projector = $1",
                    letters[0].projector,
                    [lt.record.topic for lt in letters],
                    [lt.record.partition for lt in letters],
                    [lt.record.offset for lt in letters],
                )
            }
        fresh = [
            lt
            for lt in letters
            if (lt.record.topic, lt.record.partition, lt.record.offset) not in known
        ]
        return await self.sink.send(fresh) if fresh else 0
