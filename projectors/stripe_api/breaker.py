"""A circuit breaker: after `threshold` failures in a row, refuse calls for `cooldown` s.

Closed: calls go through; each failure counts, a success resets the count. Open: every
call is refused at once (`CircuitOpen`) until the cooldown has passed. Half-open: one
trial call goes through; its success closes the circuit, its failure opens it again.
The clock is injectable so the states can be tested without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum

from projectors.stripe_api.errors import CircuitOpen


class State(Enum):
    """Where the breaker is."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Stops calling a failing service for a while, then probes it with one call."""

    def __init__(
        self,
        *,
        threshold: int = 5,
        cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        name: str = "stripe",
    ) -> None:
        if threshold < 1 or cooldown < 0:
            raise ValueError("threshold must be >= 1 and cooldown >= 0")
        self.threshold = threshold
        self.cooldown = cooldown
        self.name = name
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False

    @property
    def state(self) -> State:
        """The current state (open turns half-open once the cooldown has passed)."""
        if self._opened_at is None:
            return State.CLOSED
        if self._clock() - self._opened_at >= self.cooldown:
            return State.HALF_OPEN
        return State.OPEN

    @property
    def failures(self) -> int:
        """Failures counted since the last success."""
        return self._failures

    def before_call(self) -> None:
        """Raise `CircuitOpen` if a call must not be made now; else let it through."""
        state = self.state
        if state is State.CLOSED:
            return
        if state is State.HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True
            return
        assert self._opened_at is not None
        retry_in = max(0.0, self.cooldown - (self._clock() - self._opened_at))
        raise CircuitOpen(
            f"{self.name} circuit open after {self._failures} failures in a row; "
            f"not calling for another {retry_in:.1f} s",
            retry_in=retry_in,
        )

    def record_success(self) -> None:
        """The service answered (even with a 4xx): close the circuit."""
        self._failures = 0
        self._opened_at = None
        self._trial_in_flight = False

    def abandon(self) -> None:
        """The call ended without an answer to judge (cancelled): free the trial slot,
        count nothing. Without this a cancelled trial would keep the circuit refusing
        every call for good."""
        self._trial_in_flight = False

    def record_failure(self) -> None:
        """A 5xx, a timeout or a connection error: count it; open at the threshold."""
        self._failures += 1
        if self._trial_in_flight or self._failures >= self.threshold:
            self._opened_at = self._clock()
        self._trial_in_flight = False
