"""What can go wrong when calling Stripe, as exceptions a caller can act on.

Messages name the method, the path, the status and Stripe's own error message and request
id; never the secret key (`redact` removes it even from text Stripe echoes back).
"""

from __future__ import annotations


class StripeAPIError(Exception):
    """Stripe answered with an error that retrying will not fix (a 4xx other than 429)."""

    def __init__(
        self, message: str, *, status: int | None = None, request_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.request_id = request_id


class StripeAuthError(StripeAPIError):
    """401 or 403: the key is wrong, revoked or lacks permission for this object."""


class StripeNotFound(StripeAPIError):
    """404: Stripe has no such object (or no longer: events are kept 30 days)."""


class StripeUnavailable(Exception):
    """Stripe could not be reached or kept failing (5xx, 429, timeouts) after the retries.

    Worth trying again later, not before `retry_after` seconds when Stripe's last answer
    said so (`Retry-After`); nothing is known about the object.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CircuitOpen(StripeUnavailable):
    """Too many failures in a row: calls are refused without trying until `retry_in` s."""

    def __init__(self, message: str, *, retry_in: float) -> None:
        super().__init__(message, retry_after=retry_in)
        self.retry_in = retry_in


def redact(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` replaced by `***`."""
    return text.replace(secret, "***") if secret else text
