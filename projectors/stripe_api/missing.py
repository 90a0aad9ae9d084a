"""The events a backfill found missing from the log, kept on disk until they are appended.

A backfill lists up to 30 days of an account's events before it appends the first one
(they go oldest first, and Stripe lists newest first). Held as parsed objects, a busy
account's month would take gigabytes; here each body is written to a temporary file as
it is listed, and only its id, time, account and place in the file stay in memory.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from projectors.stripe_api.listing import created_seconds


@dataclass(frozen=True, slots=True)
class Missing:
    """Where one missing event's body is, and what the backfill needs to know of it."""

    id: str
    created: int
    account: str | None
    offset: int
    length: int


class MissingEvents:
    """Listed events the log lacks, each once (the first listing of an id counts)."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="lattice-backfill-")  # noqa: SIM115
        self._end = 0
        self._found: dict[str, Missing] = {}

    def __len__(self) -> int:
        return len(self._found)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._found

    def add(self, event: dict[str, Any], account: str | None) -> None:
        """Keep `event` (listed for `account`, None for the platform) unless kept already."""
        event_id = str(event["id"])
        if event_id in self._found:
            return
        body = orjson.dumps(event)
        self._file.seek(self._end)
        self._file.write(body)
        self._found[event_id] = Missing(
            event_id, created_seconds(event), account, self._end, len(body)
        )
        self._end += len(body)

    def oldest_first(self) -> list[Missing]:
        """Oldest first, as Stripe would have delivered them. The listings are newest
        first, also within one second: reversed, the stable sort keeps that second's
        events in order."""
        listed_backwards = list(self._found.values())[::-1]
        return sorted(listed_backwards, key=lambda found: found.created)

    def bodies(self, chosen: list[Missing]) -> Iterator[tuple[dict[str, Any], str | None]]:
        """Each of `chosen`, parsed again, with its account."""
        for found in chosen:
            self._file.seek(found.offset)
            yield orjson.loads(self._file.read(found.length)), found.account

    def close(self) -> None:
        """Remove the file."""
        self._file.close()
