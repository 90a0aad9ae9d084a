"""What the end-to-end benchmark watches while the load runs: the projectors' committed
positions (to tell when each event's rows became visible) and each process's CPU and RSS.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import asyncpg
import psutil

POLL_S = 0.01  # the resolution of "visible": one poll of lattice.offsets


@dataclass
class Commits:
    """Per (projector, partition) of the event log: when its position moved, and where to."""

    times: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    offsets: dict[tuple[str, int], list[int]] = field(default_factory=dict)

    def record(self, projector: str, partition: int, next_offset: int, at: float) -> None:
        key = (projector, partition)
        known = self.offsets.setdefault(key, [])
        if not known or next_offset > known[-1]:
            known.append(next_offset)
            self.times.setdefault(key, []).append(at)

    def visible_at(self, projector: str, partition: int, offset: int) -> float | None:
        """The first time `projector` had committed past `offset`, or None."""
        key = (projector, partition)
        offsets = self.offsets.get(key, [])
        index = bisect.bisect_right(offsets, offset)
        return self.times[key][index] if index < len(offsets) else None

    def projectors(self) -> set[str]:
        return {name for name, _ in self.offsets}


async def watch_commits(url: str, topic: str, commits: Commits, stop: asyncio.Event) -> None:
    """Poll `lattice.offsets` every POLL_S until `stop`, and once more after it (the
    last commits count too; the table may not exist at first)."""
    conn = await asyncpg.connect(url)
    try:
        while True:
            stopping = stop.is_set()
            with contextlib.suppress(asyncpg.UndefinedTableError):
                rows = await conn.fetch(
                    "SELECT projector, partition, next_offset FROM lattice.offsets "
                    "WHERE topic = $1",
                    topic,
                )
                now = time.time()
                for row in rows:
                    commits.record(row["projector"], row["partition"], row["next_offset"], now)
            if stopping:
                return
            await asyncio.sleep(POLL_S)
    finally:
        await conn.close()


@dataclass
class Usage:
    """CPU (% of one core) and RSS (MiB) samples of one process and its children."""

    cpu: list[float] = field(default_factory=list)
    rss: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MiB)


class Sampler:
    """Samples named processes every `interval` seconds on a thread."""

    def __init__(self, pids: dict[str, int], interval: float = 1.0) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.usage = {name: Usage() for name in pids}
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._began = time.monotonic()
        self._seen: dict[int, psutil.Process] = {}

    def _family(self, name: str) -> Iterable[psutil.Process]:
        # The same Process object per pid every time: `cpu_percent` measures since that
        # object's previous call, so a fresh one for a child (a uvicorn worker) reads 0.
        proc = self.procs[name]
        try:
            children = proc.children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        return [proc, *(self._seen.setdefault(child.pid, child) for child in children)]

    def _run(self) -> None:
        for name in self.procs:
            for proc in self._family(name):
                proc.cpu_percent(None)  # the first call only starts the measurement
        while not self._stop.wait(self.interval):
            for name in self.procs:
                cpu = rss = 0.0
                for proc in self._family(name):
                    with contextlib.suppress(psutil.NoSuchProcess):
                        cpu += proc.cpu_percent(None)
                        rss += proc.memory_info().rss / 2**20
                self.usage[name].cpu.append(cpu)
                self.usage[name].rss.append((time.monotonic() - self._began, rss))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
