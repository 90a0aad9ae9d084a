"""What a projection is: a name, the topics it reads, a pure reducer, a store, its SQL.

The runtime (`runner.py`) knows nothing else about a projection. A new projection is a new
sub-package of `projectors/` whose `__init__.py` exposes `projection`, an object of this
shape; `catalog.py` finds it.

Store SQL and migrations name their tables *unqualified*: the runtime sets `search_path`
to `projections` for the live tables, or to a shadow schema while `lattice replay`
rebuilds them, so the same SQL serves both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import asyncpg
import orjson
from aiokafka.structs import ConsumerRecord
from asyncpg.pool import PoolConnectionProxy

from deploy.settings import Settings

C = TypeVar("C")
# What the runtime hands to `apply`: a pooled connection or a plain one.
Connection = asyncpg.Connection | PoolConnectionProxy

LIVE_SCHEMA = "projections"
BOOKKEEPING_SCHEMA = "lattice"


class PoisonRecord(Exception):
    """A record that can never be applied (unparseable, invalid); it goes to dead letters."""


class HydrationUnavailable(Exception):
    """The full body of a thin event cannot be fetched right now (Stripe API down, rate
    limited): the runner waits and retries the record; it never dead-letters or skips it.
    `retry_after`: the least wait Stripe asked for (its `Retry-After`), if it did."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Record:
    """One Kafka record as a reducer sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Mapping[str, bytes]
    timestamp_ms: int

    def header(self, name: str) -> str | None:
        """A header's value as text, or None when absent."""
        raw = self.headers.get(name)
        return None if raw is None else raw.decode("utf-8", "replace")

    def json(self) -> dict[str, Any]:
        """The value parsed as a JSON object; PoisonRecord when it is not one."""
        try:
            parsed = orjson.loads(self.value)
        except orjson.JSONDecodeError as exc:
            raise PoisonRecord(f"value is not JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise PoisonRecord("value is not a JSON object")
        return parsed


# A frozen dataclass's __init__ sets each field through object.__setattr__, to get past
# its own __setattr__; every record the runtime reads is built here, so set the slots
# directly instead (about a microsecond less per record; the result is the same Record).
_new_record = object.__new__
_slots: Mapping[str, Any] = vars(Record)
_set_topic = _slots["topic"].__set__
_set_partition = _slots["partition"].__set__
_set_offset = _slots["offset"].__set__
_set_key = _slots["key"].__set__
_set_value = _slots["value"].__set__
_set_headers = _slots["headers"].__set__
_set_timestamp = _slots["timestamp_ms"].__set__


def to_record(msg: ConsumerRecord[bytes, bytes]) -> Record:
    """An aiokafka record as the reducer sees it."""
    record: Record = _new_record(Record)
    _set_topic(record, msg.topic)
    _set_partition(record, msg.partition)
    _set_offset(record, msg.offset)
    _set_key(record, msg.key)
    _set_value(record, msg.value if msg.value is not None else b"")
    _set_headers(record, dict(msg.headers))
    _set_timestamp(record, msg.timestamp)
    return record


class Projection(Protocol[C]):
    """A read model built from the log. `reduce` is pure; `apply` runs inside the
    runner's transaction and must not open or commit one (a savepoint is fine).

    Optional attribute the runner honours when present: `hydrate_thin_events = True`
    makes the runner replace each thin event (`"object": "v2.core.event"` without
    `data`) by its full body, through the hydrator the process was given, before
    `reduce` sees it; with `thin_event_types` (a set of event types) only thin events of
    those types are fetched, the others reach `reduce` as they are. A method
    `configured(settings)` returns the projection to run with those settings (`lattice
    project` and `lattice replay` call it).
    """

    @property
    def name(self) -> str:
        """Unique name; the consumer group is `lattice.<name>`."""
        ...

    @property
    def sql_dir(self) -> Path:
        """Folder of `NNNN_name.sql` migrations (and an optional `views.sql`)."""
        ...

    def topics(self, settings: Settings) -> Sequence[str]:
        """The topics this projection consumes."""
        ...

    def reduce(self, record: Record) -> Sequence[C]:
        """The changes one record makes; raise PoisonRecord (or anything) if it cannot."""
        ...

    async def apply(self, conn: asyncpg.Connection, changes: Sequence[C]) -> None:
        """Write a batch of changes with batched SQL, in the caller's transaction."""
        ...
