"""Counts a run prints after its tests (fuzz cases generated, faults injected), summed over
the processes that ran them.

`make test` runs the suite in several pytest-xdist workers: each keeps its own counters,
hands them to the controller when it ends (`workeroutput`), and the controller, which
collects no tests of its own, adds them up and prints one summary per tally.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

_tallies: dict[str, Counter[str]] = {}
_notes: dict[str, str] = {}
_totalled: set[str] = set()


def tally(title: str, *, total: bool = False) -> Counter[str]:
    """The run's counter printed under `title` (created on first use); with `total`, its
    summary ends with the sum."""
    if total:
        _totalled.add(title)
    return _tallies.setdefault(title, Counter())


def note(title: str, line: str) -> None:
    """A line printed at the end of `title`'s summary (such as the seed that replays it)."""
    _notes[title] = line


def export() -> dict[str, Any]:
    """This process's tallies, in a form xdist carries from a worker to the controller."""
    return {
        "tallies": {title: dict(c) for title, c in _tallies.items()},
        "notes": dict(_notes),
        "totalled": sorted(_totalled),
    }


def merge(exported: dict[str, Any]) -> None:
    """Add a worker's `export()` to this process's tallies."""
    for title, counts in exported.get("tallies", {}).items():
        tally(title).update(counts)
    _notes.update(exported.get("notes", {}))
    _totalled.update(exported.get("totalled", []))


def summaries() -> list[tuple[str, list[str]]]:
    """(title, lines) of every tally that counted something, in title order."""
    shown = []
    for title, counts in sorted(_tallies.items()):
        if not counts:
            continue
        lines = [f"{count:>8}  {name}" for name, count in sorted(counts.items())]
        if title in _totalled:
            lines.append(f"{sum(counts.values()):>8}  total")
        if title in _notes:
            lines.append(_notes[title])
        shown.append((title, lines))
    return shown
