"""The signature check agrees with Stripe's own library on every input hypothesis finds.

The one deliberate difference: a timestamp more than the tolerance in the future is
rejected here and accepted by `stripe` (which only checks age). Bodies are UTF-8 text, as
Stripe's are; `stripe` cannot even read other bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest
import stripe
from hypothesis import assume, event, example, given, settings
from hypothesis import strategies as st

from ingest.signature import SignatureError, compute_signature, parse_header, sign_header, verify
from tests.support.stripe_oracle import stripe_verdict

SECRET = "whsec_test_secret"


def stripe_accepts(body: str, header: str, secret: str, tolerance: int) -> bool:
    """Stripe's verdict; an input its library fails on (no verdict) is not compared."""
    verdict = stripe_verdict(body, header, secret, tolerance)
    assume(verdict is not None)
    return bool(verdict)


def we_accept(body: str, header: str, secrets: list[str], tolerance: int, now: float) -> bool:
    try:
        verify(body.encode(), header, secrets, now=now, tolerance=tolerance)
    except SignatureError:
        return False
    return True


def stripe_timestamp(header: str) -> int:
    timestamp, _ = stripe.WebhookSignature._get_timestamp_and_signatures(header, "v1")
    return int(timestamp)


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[str, str, str, int, float]:
    """(body, header, secret, tolerance, now) with headers spelled every way Stripe's are not."""
    body = draw(st.text(max_size=200))
    secret = draw(st.one_of(st.just(SECRET), st.text(max_size=20)))
    tolerance = draw(st.sampled_from([0, 5, 300]))
    now = time.time()
    offset = draw(st.integers(-1000, 1000))
    # Keep clear of the tolerance edges, where the two clocks are read microseconds apart.
    assume(abs(abs(offset) - tolerance) > 2)
    stamp = int(now) + offset
    good = compute_signature(body.encode(), stamp, secret)
    signing_secret = draw(st.one_of(st.just(secret), st.text(min_size=1, max_size=10)))
    other = compute_signature(body.encode(), stamp, signing_secret)
    t_spelling = draw(
        st.sampled_from(["t={}", "t= {}", "t={} ", "t=+{}", "t=0{}", " t={}", "T={}", "t"])
    )
    item = st.one_of(
        st.just(t_spelling.format(stamp)),
        st.just(f"v1={good}"),
        st.just(f"v1={good.upper()}"),
        st.just(f" v1={good}"),
        st.just(f"v1={other}"),
        st.just(f"v0={good}"),
        st.just(f"v1={good}=x"),
        st.just("v1"),
        st.just("v1="),
        st.just(""),
        st.text(max_size=12),
    )
    items = draw(st.lists(item, max_size=6))
    # Most random headers are rejected by both; plant the genuine parts often enough that
    # acceptances are searched as thoroughly.
    if draw(st.booleans()):
        items.insert(draw(st.integers(0, len(items))), f"v1={good}")
    if draw(st.booleans()):
        items.insert(0, f"t={stamp}")
    header = draw(st.sampled_from([",", ", "])).join(items)
    return body, header, secret, tolerance, now


@settings(max_examples=600, deadline=None)
@given(deliveries())
@example(("{}", f"t={int(time.time())},v1=" + "0" * 64, SECRET, 300, time.time()))
def test_agrees_with_stripe(delivery: tuple[str, str, str, int, float]) -> None:
    body, header, secret, tolerance, now = delivery
    expected = stripe_accepts(body, header, secret, tolerance)
    if expected and tolerance and stripe_timestamp(header) - now > tolerance:
        expected = False  # from the future: only we refuse it
    event("stripe accepts" if expected else "stripe rejects")
    assert we_accept(body, header, [secret], tolerance, now) == expected


@settings(max_examples=200, deadline=None)
@given(
    body=st.text(max_size=100),
    secrets=st.lists(st.text(max_size=12), min_size=1, max_size=3),
    # Most often one of the configured secrets (any of them, not only the first), else
    # another string.
    pick=st.one_of(st.integers(0, 2), st.none()),
    other=st.text(max_size=12),
    offset=st.integers(-200, 200),
)
def test_rotation_accepts_any_configured_secret(
    body: str, secrets: list[str], pick: int | None, other: str, offset: int
) -> None:
    signer = other if pick is None else secrets[pick % len(secrets)]
    now = time.time()
    header = sign_header(body.encode(), signer, int(now) + offset)
    expected = any(stripe_accepts(body, header, s, 300) for s in secrets)
    assert we_accept(body, header, secrets, 300, now) == expected


def test_matches_stripe_test_helper_and_hmac_definition() -> None:
    body = '{"id": "evt_1", "object": "event"}'
    now = int(time.time())
    header = stripe.WebhookSignature.generate_signature_header(body, SECRET, now)
    assert verify(body.encode(), header, [SECRET], now=now, tolerance=300) == now
    expected = hmac.new(SECRET.encode(), f"{now}.{body}".encode(), hashlib.sha256).hexdigest()
    assert header == sign_header(body.encode(), SECRET, now) == f"t={now},v1={expected}"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing_signature"),
        ("", "missing_signature"),
        ("v1=abc", "malformed_signature"),
        ("t=abc,v1=abc", "malformed_signature"),
        ("t=1,v1", "malformed_signature"),
        ("t=1,v0=abc", "no_v1_signature"),
        ("t=1,v1=abc", "bad_signature"),
    ],
)
def test_rejections_name_their_reason(header: str | None, reason: str) -> None:
    with pytest.raises(SignatureError) as caught:
        verify(b"{}", header, [SECRET], now=1.0, tolerance=300)
    assert caught.value.reason == reason
    assert SECRET not in str(caught.value)


def test_expired_and_future_timestamps_are_refused_both_ways() -> None:
    body, now = b"{}", 1_800_000_000.0
    # Stamps too large for a float are refused like any other, not raised as OverflowError.
    for stamp in (int(now) - 301, int(now) + 301, 10**400, -(10**400)):
        with pytest.raises(SignatureError) as caught:
            verify(body, sign_header(body, SECRET, stamp), [SECRET], now=now, tolerance=300)
        assert caught.value.reason == "timestamp_out_of_tolerance"
    for stamp in (int(now) - 300, int(now) + 300):
        assert verify(body, sign_header(body, SECRET, stamp), [SECRET], now=now, tolerance=300)


def test_parse_header_reads_first_t_and_every_v1() -> None:
    parsed = parse_header("t=5,v1=aa,t=7,v0=bb,v1=cc")
    assert parsed.timestamp == 5
    assert parsed.signatures == (b"aa", b"cc")
