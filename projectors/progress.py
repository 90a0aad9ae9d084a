"""How far a rebuild is: records done of the known total, the speed, the time left."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiokafka import TopicPartition


@dataclass(frozen=True)
class Progress:
    """How far a replay is: records done of the known total, and the speed."""

    done: int
    total: int
    seconds: float

    @property
    def rate(self) -> float:
        """Records per second so far."""
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the current rate (None before the first batch)."""
        rate = self.rate
        return max(0, self.total - self.done) / rate if rate > 0 else None


def report_progress(
    on_progress: Callable[[Progress], None] | None,
    positions: Mapping[TopicPartition, int],
    first: Mapping[TopicPartition, int],
    ends: Mapping[TopicPartition, int],
    started: float,
    *,
    force: bool = False,
) -> None:
    """Tell `on_progress` how far the partitions are between their first and end offsets."""
    if on_progress is None:
        return
    done = sum(positions[tp] - first[tp] for tp in positions)
    total = sum(max(ends[tp], positions[tp]) - first[tp] for tp in positions)
    on_progress(Progress(done, total, time.monotonic() - started))
