"""Positions in PostgreSQL: `lattice.offsets`, the next offset to apply per partition.

Written only by compare-and-set inside the transaction that applied the records, so a
consumer that lost its partition (a zombie) or whose positions a replay replaced writes
nothing: its whole transaction rolls back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aiokafka import TopicPartition

from projectors.base import Connection

# A batch's new position per partition, with the Kafka timestamp of its last record.
_CAS = """
WITH input AS (
    SELECT * FROM unnest($2::text[], $3::int[], $4::bigint[], $5::bigint[], $6::bigint[])
        AS i(topic, partition, expected, next_offset, last_ms)
), updated AS (
    UPDATE lattice.offsets AS o
       SET next_offset = i.next_offset,
           last_event_at = to_timestamp(i.last_ms / 1000.0),
           updated_at = now()
      FROM input AS i
     WHERE o.projector = $1 AND o.topic = i.topic AND o.partition = i.partition
       AND o.next_offset = i.expected
    RETURNING 1
), inserted AS (
    INSERT INTO lattice.offsets (projector, topic, partition, next_offset, last_event_at)
    SELECT $1, topic, partition, next_offset, to_timestamp(last_ms / 1000.0)
      FROM input WHERE expected < 0
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM updated) + (SELECT count(*) FROM inserted)
"""


class PositionConflict(Exception):
    """The stored positions are not the ones this batch started from: another consumer
    (or a replay) moved them. The batch is rolled back; the consumer re-seeks."""


@dataclass(frozen=True, slots=True)
class Advance:
    """Where a batch moves one partition: from `expected` (None: no row yet) to `next_offset`.

    `last_timestamp_ms` is None where no record was applied yet (a replay's starting row
    with nothing to carry over): stored as NULL, which `lattice status` shows as "-".
    """

    expected: int | None
    next_offset: int
    last_timestamp_ms: int | None


@dataclass(frozen=True, slots=True)
class Stored:
    """A stored position and the Kafka timestamp of the record before it (None: unknown)."""

    next_offset: int
    last_timestamp_ms: int | None


async def load(
    conn: Connection, projector: str, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, int | None]:
    """The stored next offset of each partition; None where nothing was stored yet."""
    wanted = list(partitions)
    rows = await conn.fetch(
        "SELECT topic, partition, next_offset FROM lattice.offsets WHERE projector = $1",
        projector,
    )
    stored = {TopicPartition(r["topic"], r["partition"]): int(r["next_offset"]) for r in rows}
    return {tp: stored.get(tp) for tp in wanted}


async def load_all(conn: Connection, projector: str) -> dict[TopicPartition, Stored]:
    """Every stored position of a projector, with its last event's time (a replay copies
    both, so a partition it re-applies nothing on keeps the time its tables reflect)."""
    # Milliseconds computed in numeric: exact, where a float of seconds could lose one.
    rows = await conn.fetch(
        "SELECT topic, partition, next_offset, "
        "round(extract(epoch FROM last_event_at) * 1000)::bigint AS last_ms "
        "FROM lattice.offsets WHERE projector = $1",
        projector,
    )
    return {
        TopicPartition(r["topic"], r["partition"]): Stored(int(r["next_offset"]), r["last_ms"])
        for r in rows
    }


async def compare_and_set(
    conn: Connection, projector: str, moves: Mapping[TopicPartition, Advance]
) -> None:
    """Move every partition of a batch or none (raise PositionConflict); in the caller's
    transaction, whose row locks also make a concurrent zombie wait, then fail."""
    if not moves:
        return
    items = list(moves.items())
    changed = await conn.fetchval(
        _CAS,
        projector,
        [tp.topic for tp, _ in items],
        [tp.partition for tp, _ in items],
        [-1 if m.expected is None else m.expected for _, m in items],
        [m.next_offset for _, m in items],
        [m.last_timestamp_ms for _, m in items],
    )
    if changed != len(items):
        raise PositionConflict(
            f"{projector}: stored positions moved under this consumer "
            f"({changed} of {len(items)} partitions matched); rolling back"
        )


async def lock(conn: Connection, projector: str) -> None:
    """Lock a projector's position rows until the transaction ends (replay swap: taken
    before the tables, in the same order as the runner, so the two never deadlock)."""
    await conn.execute("SELECT 1 FROM lattice.offsets WHERE projector = $1 FOR UPDATE", projector)


async def adopt(conn: Connection, projector: str, source: str) -> None:
    """Replace all of `projector`'s positions by those of `source` (a replay's), and drop
    `source`'s; in the caller's transaction."""
    await conn.execute("DELETE FROM lattice.offsets WHERE projector = $1", projector)
    # `lock` held only the rows there were: a runner's first position of a partition may
    # have been stored since (a batch that changed no table); the replay's wins.
    await conn.execute(
        "INSERT INTO lattice.offsets (projector, topic, partition, next_offset, last_event_at) "
        "SELECT $1, topic, partition, next_offset, last_event_at FROM lattice.offsets "
        "WHERE projector = $2 ON CONFLICT (projector, topic, partition) DO UPDATE "
        "SET next_offset = EXCLUDED.next_offset, last_event_at = EXCLUDED.last_event_at, "
        "updated_at = now()",
        projector,
        source,
    )
    await forget(conn, source)


async def forget(conn: Connection, projector: str) -> None:
    """Delete every position of a projector (a replay's own positions, once swapped in)."""
    await conn.execute("DELETE FROM lattice.offsets WHERE projector = $1", projector)
