"""The `events` store: one multi-row insert per batch (arrays unnested server-side)."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from projectors.events.reducer import EventRow

# First occurrence wins: a redelivered event id (at a later offset) changes nothing.
INSERT_EVENTS = """
INSERT INTO events (id, type, created, account, livemode, api_version, object_id,
                    topic, partition, kafka_offset, received_at,
                    last_event_id, last_event_created)
SELECT u.id, u.type, to_timestamp(u.created), u.account, u.livemode, u.api_version,
       u.object_id, u.topic, u.partition, u.kafka_offset, to_timestamp(u.received_at),
       u.id, to_timestamp(u.created)
  FROM unnest($1::text[], $2::text[], $3::float8[], $4::text[], $5::bool[], $6::text[],
              $7::text[], $8::text[], $9::int[], $10::bigint[], $11::float8[])
       AS u(id, type, created, account, livemode, api_version, object_id,
            topic, partition, kafka_offset, received_at)
ON CONFLICT (id) DO NOTHING
"""


async def apply(conn: asyncpg.Connection, rows: Sequence[EventRow]) -> None:
    """Insert the rows of a batch in one round trip."""
    if not rows:
        return
    columns = list(zip(*rows, strict=True))
    await conn.execute(INSERT_EVENTS, *[list(column) for column in columns])
