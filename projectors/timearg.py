"""Command-line arguments shared by replay and rewind: TIME and PARTITION:OFFSET (pure)."""

from __future__ import annotations

from datetime import UTC, datetime


class ArgumentError(ValueError):
    """A TIME or PARTITION:OFFSET argument that cannot be read; the message shows the form."""


def parse_time(text: str) -> datetime:
    """RFC 3339 (`2026-11-01T00:00:00Z`) or Unix seconds (`1793491200`), as aware UTC."""
    raw = text.strip()
    try:
        return datetime.fromtimestamp(float(raw), UTC)
    except ValueError:
        pass
    except OverflowError:
        raise ArgumentError(f"TIME {text!r} is out of range") from None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise ArgumentError(
            f"TIME {text!r} is neither RFC 3339 (2026-11-01T00:00:00Z) nor Unix seconds"
        ) from None
    if moment.tzinfo is None:
        raise ArgumentError(f"TIME {text!r} has no UTC offset: add Z or +00:00")
    return moment.astimezone(UTC)


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
