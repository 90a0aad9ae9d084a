"""Stripe's own library as the signature check's test oracle, where it gives a verdict.

`stripe.WebhookSignature.verify_header` answers True or raises `SignatureVerificationError`.
On some input Stripe never sends it raises something else instead: a `v1` with non-ASCII
characters ahead of the right one makes `hmac.compare_digest` raise `TypeError`, so the
library neither accepts nor refuses. Such a header has no verdict to agree with (`None`);
the receiver decides by the definition (any `v1` that is the HMAC of the body).
"""

from __future__ import annotations

import stripe


def stripe_verdict(body: str, header: str, secret: str, tolerance: int | None) -> bool | None:
    """True if Stripe accepts, False if it refuses, None if its library fails on the input."""
    try:
        return bool(stripe.WebhookSignature.verify_header(body, header, secret, tolerance))
    except stripe.SignatureVerificationError:
        return False
    except (TypeError, ValueError):
        return None
