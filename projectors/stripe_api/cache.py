"""The tables that keep what Stripe answered (`lattice.hydrated_events`,
`lattice.hydrated_lines`), and the JSON that goes in and comes out of them."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson


@dataclasses.dataclass(frozen=True)
class Cache:
    """A table of `lattice` keyed by `id` that keeps what Stripe answered, as jsonb."""

    table: str
    columns: tuple[str, ...]  # between `id` and the jsonb column
    body: str
    what: str  # for messages

    @property
    def read(self) -> str:
        return f"SELECT {self.body}::text FROM lattice.{self.table} WHERE id = $1"

    @property
    def store(self) -> str:
        """One round trip whether or not another process cached it first: the CTE's row
        or the existing one, always as PostgreSQL serialises jsonb (the same bytes on
        every read)."""
        names = ", ".join(("id", *self.columns, self.body))
        n = len(self.columns) + 2
        values = ", ".join([*(f"${i}" for i in range(1, n)), f"${n}::jsonb"])
        return f"""
WITH stored AS (
    INSERT INTO lattice.{self.table} ({names}) VALUES ({values})
    ON CONFLICT (id) DO NOTHING
    RETURNING {self.body}
)
SELECT {self.body}::text FROM stored
UNION ALL
{self.read}
LIMIT 1
"""


EVENTS = Cache("hydrated_events", ("type", "context"), "body", "thin events")
LINES = Cache("hydrated_lines", ("object", "account"), "lines", "fetched lines")


def storable(answer: Any) -> bytes:
    """Stripe's answer as JSON that jsonb takes: jsonb refuses the NUL character (`\\u0000`,
    which a description or an echoed error message could hold), so a NUL inside a string
    becomes U+FFFD; anything else is kept as Stripe sent it."""
    body = orjson.dumps(answer)
    return orjson.dumps(_without_nul(answer)) if b"\\u0000" in body else body


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    return value


def compact(jsonb_text: str) -> bytes:
    # PostgreSQL prints jsonb with spaces; re-encode compactly (key order is jsonb's own).
    return orjson.dumps(orjson.loads(jsonb_text))
