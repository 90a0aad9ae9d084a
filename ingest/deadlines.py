"""Many waits with one shared duration, expired by one timer instead of one timer each.

`asyncio.timeout()` arms and cancels a timer per use (~10 µs under uvloop), and the
receiver needs two per delivery (the body must arrive, the broker must acknowledge).
Every wait of one `Deadlines` lasts the same `seconds`, so their deadlines come in the
order they were started: a FIFO holds them and a single timer, armed for the oldest
unfinished one, expires each exactly at its deadline. Starting a wait is an append;
finishing one sets a flag.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

# Timers may run up to a clock tick before their time; a wait that close is due.
_EARLY = 0.001


class Wait:
    """One watched wait; `finish()` it when it ends, whichever way it ends."""

    __slots__ = ("deadline", "expire", "expired", "finished")

    def __init__(self, deadline: float, expire: Callable[[], object]) -> None:
        self.deadline = deadline
        self.expire = expire
        self.finished = False
        self.expired = False

    def finish(self) -> None:
        """The wait ended: it will not expire any more."""
        self.finished = True


class Deadlines:
    """Calls a wait's `expire` callback when it is still unfinished `seconds` after its start."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._waits: deque[Wait] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def start(self, expire: Callable[[], object]) -> Wait:
        """Watch a wait starting now; `expire()` runs in the loop if it is late."""
        loop = asyncio.get_running_loop()
        wait = Wait(loop.time() + self.seconds, expire)
        waits = self._waits
        while waits and waits[0].finished:  # most waits end in order: keep the FIFO short
            waits.popleft()
        waits.append(wait)
        if self._timer is None:
            self._timer = loop.call_at(wait.deadline, self._expire, loop)
        return wait

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time() + _EARLY
        waits = self._waits
        while waits:
            wait = waits[0]
            if wait.finished:
                waits.popleft()
            elif wait.deadline <= now:
                waits.popleft()
                wait.finished = wait.expired = True
                wait.expire()
            else:
                self._timer = loop.call_at(wait.deadline, self._expire, loop)
                return

    def close(self) -> None:
        """Stop the timer (the waits left are not expired any more)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._waits.clear()
