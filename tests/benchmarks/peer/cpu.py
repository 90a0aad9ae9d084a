"""CPU a server used over one load run: the CPU time of its process and every child (uvicorn's
worker processes) between the start and the end, as % of one core.

CPU time deltas rather than samples: `psutil.Process.cpu_percent` measures from the
previous call on the same object, so a sampler that looks up the children afresh each
time reads 0 for each of them.
"""

from __future__ import annotations

import contextlib
import time

import psutil


def _family_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


class CpuMeter:
    """`with CpuMeter(pid) as meter: ...`; then `meter.seconds` of CPU used inside, and
    `meter.percent` of one core over the block's wall time (`over(s)`: over `s` seconds)."""

    def __init__(self, pid: int) -> None:
        root = psutil.Process(pid)
        self.procs = [root, *root.children(recursive=True)]
        self.seconds = self.wall = float("nan")
        self._began = 0.0
        self._cpu = 0.0

    def __enter__(self) -> CpuMeter:
        self._began, self._cpu = time.perf_counter(), _family_seconds(self.procs)
        return self

    def __exit__(self, *_: object) -> None:
        self.wall = time.perf_counter() - self._began
        self.seconds = _family_seconds(self.procs) - self._cpu

    @property
    def percent(self) -> float:
        return self.over(self.wall)

    def over(self, seconds: float) -> float:
        """CPU used as % of one core over `seconds` (e.g. the load's own duration)."""
        return 100 * self.seconds / seconds
