"""Command-line arguments shared by replay and rewind: TIME and PARTITION:OFFSET (pure)."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

from schemas.envelope import rfc3339_moment


class ArgumentError(ValueError):
    """A TIME or PARTITION:OFFSET argument that cannot be read; the message shows the form."""


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECONDS_FROM = 1e11  # as Unix seconds, the year 5138; as milliseconds, 1973
# A time of hours and minutes only, then its offset: `2026-11-01T00:00Z`.
_NO_SECONDS = re.compile(r"[Tt ][0-9]{2}:[0-9]{2}(?:[Zz]|[+-][0-9]{2}:?[0-9]{2})$")


def parse_time(text: str) -> datetime:
    """RFC 3339 (`2026-11-01T00:00:00Z`) or Unix seconds (`1793491200`), as aware UTC,
    never before 1970: Kafka timestamps count from the epoch and refuse to go below it."""
    moment = _read_time(text)
    if moment < _EPOCH:
        raise ArgumentError(f"TIME {text!r} is before 1970-01-01T00:00:00Z, where the log begins")
    return moment


def _missing(raw: str) -> str | None:
    """What RFC 3339 also needs of a date and time Python can read; None for anything
    else."""
    try:
        read = datetime.fromisoformat(raw.upper())
    except ValueError:
        return None
    if read.tzinfo is None:
        return "a UTC offset"
    return "seconds" if _NO_SECONDS.search(raw) else None


def _read_time(text: str) -> datetime:
    raw = text.strip()
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if math.isinf(seconds):
        raise ArgumentError(f"TIME {text!r} is out of range")
    if seconds >= _MILLISECONDS_FROM:
        # Kafka's own timestamps (`CreateTime:1795600800123` in its console consumer).
        raise ArgumentError(
            f"TIME {text!r} looks like milliseconds: give Unix seconds "
            f"({int(seconds) // 1000}) or RFC 3339 (2026-11-01T00:00:00Z)"
        )
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except ValueError:
        pass
    except OverflowError:
        raise ArgumentError(f"TIME {text!r} is out of range") from None
    moment = rfc3339_moment(raw)
    if moment is None:
        missing = _missing(raw)
        if missing is None:
            raise ArgumentError(
                f"TIME {text!r} is neither RFC 3339 (2026-11-01T00:00:00Z) nor Unix seconds"
            )
        raise ArgumentError(
            f"TIME {text!r} lacks {missing}: RFC 3339 is a date, a time with seconds and "
            "Z or +00:00 (2026-11-01T00:00:00Z)"
        )
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 has no UTC date
        raise ArgumentError(f"TIME {text!r} is out of range") from None


def parse_partition_offset(text: str) -> tuple[int, int]:
    """`PARTITION:OFFSET`, two non-negative integers."""
    partition, sep, offset = text.partition(":")
    try:
        if not sep:
            raise ValueError
        parsed = int(partition), int(offset)
    except ValueError:
        raise ArgumentError(
            f"{text!r} is not PARTITION:OFFSET (two integers, e.g. 0:1200)"
        ) from None
    if parsed[0] < 0 or parsed[1] < 0:
        raise ArgumentError(f"{text!r}: partition and offset are never negative")
    return parsed
