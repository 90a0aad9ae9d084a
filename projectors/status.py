"""`lattice status`: per projector and partition, where it is and how far behind."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer

from deploy import kafka_options
from deploy.settings import Settings
from projectors.base import LIVE_SCHEMA
from projectors.shadow import replay_key
from projectors.topic_partitions import partitions_of


@dataclass(frozen=True)
class PartitionStatus:
    """One projector's state in one partition."""

    projector: str
    topic: str
    partition: int
    position: int | None
    log_end: int
    lag: int
    last_event_at: datetime | None
    dead_letters: int
    log_start: int

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict (times as RFC 3339)."""
        data = asdict(self)
        data["last_event_at"] = self.last_event_at.isoformat() if self.last_event_at else None
        return data


async def _stored(url: str) -> tuple[list[asyncpg.Record], dict[tuple[str, str, int], int]]:
    conn = await asyncpg.connect(url)
    try:
        try:
            rows = await conn.fetch(
                "SELECT projector, topic, partition, next_offset, last_event_at "
                "FROM lattice.offsets ORDER BY projector, topic, partition"
            )
            dead = await conn.fetch(
                "SELECT projector, topic, partition, count(*) AS n FROM lattice.dead_letters "
                "GROUP BY projector, topic, partition"
            )
        except asyncpg.UndefinedTableError:
            return [], {}  # never migrated: every projector is at the beginning
    finally:
        await conn.close()
    return rows, {(r["projector"], r["topic"], r["partition"]): int(r["n"]) for r in dead}


async def collect(
    settings: Settings,
    projections: Sequence[Any],
    *,
    others: bool = True,
    missing: list[str] | None = None,
) -> list[PartitionStatus]:
    """The status of every given projection and of its replay in progress; with `others`,
    also of every other projector with stored positions (other replays, projectors run
    by other versions). `missing` gets the given projections' topics the broker lacks."""
    rows, dead = await _stored(settings.require_database_url())
    stored = {(r["projector"], r["topic"], r["partition"]): r for r in rows}
    wanted: dict[str, list[str]] = {p.name: list(p.topics(settings)) for p in projections}
    replays = {replay_key(name) for name in wanted}
    for r in rows:
        if not others and r["projector"] not in wanted and r["projector"] not in replays:
            continue
        wanted.setdefault(r["projector"], [])
        if r["topic"] not in wanted[r["projector"]]:
            wanted[r["projector"]].append(r["topic"])
    consumer = AIOKafkaConsumer(
        **kafka_options.options(),
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        client_id="lattice-status",
    )
    try:
        await consumer.start()
        topics = sorted({t for ts in wanted.values() for t in ts})
        tps = await partitions_of(consumer, topics, missing_ok=True)
        if missing is not None:
            present = {tp.topic for tp in tps}
            missing.extend(sorted({t for p in projections for t in p.topics(settings)} - present))
        ends = await consumer.end_offsets(tps) if tps else {}
        starts = await consumer.beginning_offsets(tps) if tps else {}
    finally:
        await consumer.stop()
    result: list[PartitionStatus] = []
    for projector, projector_topics in wanted.items():
        for tp in tps:
            if tp.topic not in projector_topics:
                continue
            row = stored.get((projector, tp.topic, tp.partition))
            position = int(row["next_offset"]) if row else None
            result.append(
                PartitionStatus(
                    projector=projector,
                    topic=tp.topic,
                    partition=tp.partition,
                    position=position,
                    log_end=ends[tp],
                    # Offsets deleted below the log's start are never read: not lag.
                    lag=max(0, ends[tp] - max(position or 0, starts[tp])),
                    last_event_at=row["last_event_at"] if row else None,
                    dead_letters=dead.get((projector, tp.topic, tp.partition), 0),
                    log_start=starts[tp],
                )
            )
    return result


def deleted_unread(statuses: Sequence[PartitionStatus]) -> list[str]:
    """A line for each partition whose log now starts past a projector's stored position:
    offsets deleted (a retention set on the topic, `kafka-delete-records`) before it read
    them, whose records are missing from its tables for good."""
    return [
        f"{s.projector} {s.topic}:{s.partition}: offsets {s.position}-{s.log_start - 1} were "
        "deleted from the log before it read them (a retention set on the topic, or records "
        "deleted); the records among them are missing from its tables for good"
        for s in statuses
        if s.position is not None and s.position < s.log_start
    ]


async def warnings(settings: Settings, projections: Sequence[Any]) -> list[str]:
    """What each projection (with a `warnings(conn, schema)`) says is wrong with its live
    tables, beyond positions: "<name>: <what>"; nothing for tables not migrated yet."""
    checks = [(p.name, p.warnings) for p in projections if hasattr(p, "warnings")]
    if not checks:
        return []
    conn = await asyncpg.connect(settings.require_database_url())
    found: list[str] = []
    try:
        for name, check in checks:
            try:
                found += [f"{name}: {line}" for line in await check(conn, LIVE_SCHEMA)]
            except asyncpg.UndefinedTableError:
                continue
    finally:
        await conn.close()
    return found


def render(statuses: Sequence[PartitionStatus]) -> str:
    """A plain-text table, one line per projector and partition."""
    header = ("PROJECTOR", "TOPIC", "PART", "POSITION", "LOG END", "LAG", "LAST EVENT", "DEAD")
    lines = [header] + [
        (
            s.projector,
            s.topic,
            str(s.partition),
            "-" if s.position is None else str(s.position),
            str(s.log_end),
            str(s.lag),
            s.last_event_at.strftime("%Y-%m-%dT%H:%M:%SZ") if s.last_event_at else "-",
            str(s.dead_letters),
        )
        for s in statuses
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
