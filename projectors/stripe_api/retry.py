"""When to retry a Stripe request, and how long to wait first (pure).

Follows Stripe's own libraries: `Stripe-Should-Retry` decides when present; otherwise
retry 409 (lock contention), 429 and 5xx, and connection errors. The wait grows
exponentially with jitter so many clients do not retry in step, and is never shorter
than a `Retry-After` the server asked for (capped, so a bad header cannot stall us).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

RETRYABLE_STATUSES = frozenset({409, 429})


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with jittered exponential backoff."""

    max_retries: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 60.0
    random: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def should_retry_status(self, status: int, headers: Mapping[str, str]) -> bool:
        """Whether an answer with this status and these headers is worth another try."""
        hint = headers.get("stripe-should-retry")
        if hint == "true":
            return True
        if hint == "false":
            return False
        return status in RETRYABLE_STATUSES or status >= 500

    def delay(self, retry: int, headers: Mapping[str, str] | None = None) -> float:
        """Seconds to wait before retry number `retry` (1-based)."""
        exponential = min(self.max_delay, self.base_delay * 2.0 ** (retry - 1))
        # "Equal jitter": between half and all of the exponential step.
        wait = exponential * (0.5 + 0.5 * self.random())
        retry_after = self.retry_after(headers)
        return wait if retry_after is None else max(wait, retry_after)

    def retry_after(self, headers: Mapping[str, str] | None) -> float | None:
        """The answer's `Retry-After` in seconds, capped at `max_retry_after`; None if none."""
        seconds = parse_retry_after((headers or {}).get("retry-after"))
        return None if seconds is None else min(seconds, self.max_retry_after)


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds (Stripe sends delta-seconds), or None when absent or odd."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
