"""A test projection that records every application of every record, so that a record
applied twice (which the idempotent `events` table would hide) is counted twice."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from deploy.settings import Settings
from projectors.base import Connection, PoisonRecord, Record
from projectors.deadletter import DeadLetter

Applied = tuple[str, int, int]


@dataclass(frozen=True)
class AuditProjection:
    """`audit_applied`: one row per application; records named in `fail_on` never apply.
    With `hydrate_thin_events`, a thin event that reaches `reduce` without its `data` is
    poison (so a test sees whether the runner hydrated it)."""

    name: str = "audit"
    sql_dir: Path = Path(__file__).resolve().parent / "audit_sql"
    fail_on: frozenset[bytes] = frozenset()
    hydrate_thin_events: bool = False

    def topics(self, settings: Settings) -> Sequence[str]:
        """The event log."""
        return [settings.topic]

    def reduce(self, record: Record) -> Sequence[Applied]:
        """One row per record; a record whose value is in `fail_on` is poison."""
        if record.value in self.fail_on:
            raise PoisonRecord("marked as poison by the test")
        thin = self.hydrate_thin_events and b"v2.core.event" in record.value
        if thin and "data" not in record.json():
            raise PoisonRecord("a thin event reached reduce without its data")
        return [(record.topic, record.partition, record.offset)]

    async def apply(self, conn: Connection, changes: Sequence[Applied]) -> None:
        """Append the rows."""
        topics, partitions, offsets = (list(c) for c in zip(*changes, strict=True))
        await conn.execute(
            "INSERT INTO audit_applied SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[])",
            topics,
            partitions,
            offsets,
        )


async def applied_counts(conn: asyncpg.Connection) -> dict[Applied, int]:
    """How many times each record was applied."""
    rows = await conn.fetch(
        "SELECT topic, partition, kafka_offset, count(*) AS n FROM projections.audit_applied "
        "GROUP BY 1, 2, 3"
    )
    return {(r["topic"], r["partition"], r["kafka_offset"]): int(r["n"]) for r in rows}


async def assert_each_applied_once(url: str, produced: int) -> None:
    """Every one of `produced` records was applied, none twice."""
    conn = await asyncpg.connect(url)
    try:
        counts = await applied_counts(conn)
    finally:
        await conn.close()
    assert len(counts) == produced, "a record was never applied"
    assert [k for k, n in counts.items() if n != 1] == [], "records applied more than once"


class NoDeadLetters:
    """A dead-letter sink for batches that must not produce any."""

    async def send(self, letters: Sequence[DeadLetter]) -> int:
        raise AssertionError(f"no dead letter expected, got {letters}")
