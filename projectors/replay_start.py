"""Where a replay starts: from the beginning, from one partition's offset, or from a time;
the shadow built, and its first positions, seeded with the live tables when it does not
start from the beginning."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from deploy.settings import Settings
from projectors import dependents, offsets, shadow
from projectors.base import LIVE_SCHEMA, Connection
from projectors.migrate import migrate


class ReplayError(Exception):
    """A replay cannot start or finish; the message says what to do."""


@dataclass(frozen=True)
class StartAt:
    """Where a replay starts: the beginning, one partition's offset, or a time."""

    from_beginning: bool = False
    partition_offset: tuple[int, int] | None = None
    since: datetime | None = None


def _named_partition(
    settings: Settings, tps: list[TopicPartition], partition: int
) -> TopicPartition:
    """The partition `--offset P:N` means: of the events topic when the projection reads
    it, else of its first topic."""
    topic = settings.topic if settings.topic in {tp.topic for tp in tps} else tps[0].topic
    tp = TopicPartition(topic, partition)
    if tp not in tps:
        raise ReplayError(f"{topic} has no partition {partition}")
    return tp


async def check_offset(
    consumer: AIOKafkaConsumer, settings: Settings, tps: list[TopicPartition], start: StartAt
) -> None:
    """Refuse `--offset P:N` past the end of P before anything is built, as `lattice
    rewind` does (it would start at the end and swap in a rebuild of nothing)."""
    if start.partition_offset is None:
        return
    partition, offset = start.partition_offset
    tp = _named_partition(settings, tps, partition)
    end = (await consumer.end_offsets([tp]))[tp]
    if offset > end:
        first = (await consumer.beginning_offsets([tp]))[tp]
        raise ReplayError(
            f"offset {offset} is outside {tp.topic}:{partition}, which holds {first}..{end}"
        )


async def prepare(
    conn: asyncpg.Connection,
    consumer: AIOKafkaConsumer,
    projection: Any,
    settings: Settings,
    tps: list[TopicPartition],
    start: StartAt,
    schema: str,
) -> dict[TopicPartition, offsets.Advance]:
    """The live schema migrated, the shadow built (and seeded unless from the beginning):
    the rebuild's first positions."""
    await migrate(conn, [projection])  # the live schema is current before we copy
    try:  # live tables newer than this code: refuse now, not after hours of rebuilding
        async with conn.transaction():
            await shadow.refuse_newer_migrations(conn, projection)
    except shadow.SwapError as exc:
        raise ReplayError(str(exc)) from None
    tables = await shadow.build(conn, projection, schema)
    foreign = await dependents.not_recreatable(conn, LIVE_SCHEMA, tables)
    if foreign:
        role = await conn.fetchval("SELECT current_user")
        raise ReplayError(
            f"the swap would drop and create again views role {role} cannot: "
            f"{', '.join(foreign)}; grant it their owners' roles (GRANT owner TO {role}) "
            "or drop them, then replay again"
        )
    await offsets.forget(conn, shadow.replay_key(projection.name))
    return await start_positions(conn, consumer, projection, settings, tps, start, schema, tables)


async def start_positions(
    conn: Connection,
    consumer: AIOKafkaConsumer,
    projection: Any,
    settings: Settings,
    tps: list[TopicPartition],
    start: StartAt,
    schema: str,
    tables: list[str],
) -> dict[TopicPartition, offsets.Advance]:
    """The replay's first positions, each with the time of the last event its tables
    reflect: none from the beginning (empty tables), else the live one copied with them."""
    beginning: dict[TopicPartition, int] = await consumer.beginning_offsets(tps)
    if start.from_beginning:
        return {tp: offsets.Advance(None, beginning[tp], None) for tp in tps}
    async with conn.transaction(isolation="repeatable_read"):
        live = await offsets.load_all(conn, projection.name)
        await conn.execute(f"SET LOCAL search_path TO {shadow.ident(schema)}, public")
        await shadow.seed(conn, schema, tables)
    current = {tp: live[tp].next_offset if tp in live else beginning[tp] for tp in tps}
    ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
    past = [tp for tp in tps if current[tp] > ends[tp]]
    if past:
        # The topic was deleted and created again: a rebuild on top of the live tables
        # would keep positions the log never reaches (the live runner refuses them too).
        named = ", ".join(f"{tp.topic}:{tp.partition} at {current[tp]}" for tp in past)
        raise ReplayError(
            f"the live positions are past the log end ({named}, which ends at "
            f"{', '.join(str(ends[tp]) for tp in past)}): was the topic created again? "
            f"`lattice replay {projection.name} --from-beginning` rebuilds from what it holds"
        )
    wanted: dict[TopicPartition, int] = {}
    if start.partition_offset is not None:
        partition, offset = start.partition_offset
        tp = _named_partition(settings, tps, partition)
        wanted[tp] = max(offset, beginning[tp])
    elif start.since is not None:
        ms = int(start.since.timestamp() * 1000)
        found = await consumer.offsets_for_times(dict.fromkeys(tps, ms))
        wanted = {tp: (found[tp].offset if found.get(tp) else ends[tp]) for tp in tps}
    # Never start after the live position: what the live tables lack must be applied.
    # A partition that re-applies records gets their times; one that has none to re-apply
    # keeps the live time (not the epoch a 0 would store).
    return {
        tp: offsets.Advance(
            None,
            min(wanted.get(tp, current[tp]), current[tp]),
            live[tp].last_timestamp_ms if tp in live else None,
        )
        for tp in tps
    }
