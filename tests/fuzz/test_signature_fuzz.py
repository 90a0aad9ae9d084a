"""Hostile `Stripe-Signature` headers against the pure signature check.

The oracle: `verify` returns only when the header carries a `v1` that is the HMAC of this
body at this header's first `t`, under one of the endpoint's secrets, within the
tolerance. Everything else, however mangled, ends in `SignatureError`, never another
exception.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from ingest.signature import SignatureError, compute_signature, verify
from tests.fuzz.conftest import fuzz_settings

SECRET = "whsec_fuzz_0123456789abcdef"
OTHER_SECRET = "whsec_fuzz_other"  # the endpoint's second secret (rotation)
ROGUE_SECRET = "whsec_not_this_endpoints"
SECRETS = (OTHER_SECRET, SECRET)
NOW = 1_764_000_000
TOLERANCE = 300

timestamps = st.one_of(
    st.integers(NOW - 2 * TOLERANCE, NOW + 2 * TOLERANCE),
    st.integers(-(2**70), 2**70),
)


@st.composite
def header_items(draw: st.DrawFn, body: bytes, t: int) -> str:
    """One comma-separated item, mostly plausible, sometimes garbage; signatures are made
    mostly over the header's own timestamp `t`, so that some headers are genuine."""
    kind = draw(
        st.sampled_from(
            ["t", "t_junk", "v1_right", "v1_other_body", "v1_other_secret", "v1_junk", "v0", "junk"]
        )
    )
    if kind == "t":
        return f"t={draw(st.one_of(st.just(t), timestamps))}"
    if kind == "t_junk":
        value = draw(st.one_of(st.text(max_size=30), st.just("9" * 5000), st.just("")))
        return f"t={value}"
    if kind.startswith("v1_") and kind != "v1_junk":
        signed_t = draw(st.one_of(st.just(t), timestamps))
        other = body + b"x" if kind == "v1_other_body" else body
        secret = ROGUE_SECRET if kind == "v1_other_secret" else draw(st.sampled_from(SECRETS))
        return f"v1={compute_signature(other, signed_t, secret)}"
    if kind == "v1_junk":
        return "v1=" + draw(st.one_of(st.text(max_size=70), st.text("0123456789abcdefABCDEF")))
    if kind == "v0":
        return f"v0={hashlib.sha256(body).hexdigest()}"
    return draw(st.text(max_size=40))


def expected_accept(body: bytes, header: str) -> bool:
    """The reference reading of a header, written independently of the code under test."""
    first_t: int | None = None
    v1s: list[str] = []
    for item in header.split(","):
        name, eq, value = item.partition("=")
        if name == "t":
            if not eq:
                return False  # Stripe's libraries index item[1] of every `t`
            if first_t is None:  # only the first `t` is read as a number
                try:
                    first_t = int(value.split("=", 1)[0])
                except ValueError:
                    return False
        elif name == "v1":
            if not eq:
                return False
            v1s.append(value.split("=", 1)[0])
    if first_t is None or abs(NOW - first_t) > TOLERANCE:
        return False
    for secret in (SECRET, OTHER_SECRET):
        right = hmac.new(secret.encode(), b"%d." % first_t + body, hashlib.sha256).hexdigest()
        if right in v1s:
            return True
    return False


def outcome(body: bytes, header: str | None, secrets: list[str]) -> int | str:
    """The signed timestamp when `verify` accepts, else the reason it gives."""
    try:
        return verify(body, header, secrets, now=NOW, tolerance=TOLERANCE)
    except SignatureError as exc:
        return exc.reason


@fuzz_settings(1000)
@given(body=st.binary(max_size=256), data=st.data())
def test_structured_headers_accept_exactly_the_right_signature(
    body: bytes, data: st.DataObject, cases: Counter[str]
) -> None:
    cases["signature: structured headers"] += 1
    # Mostly within the tolerance, so that a genuine pair is mostly accepted.
    t = data.draw(st.one_of(st.integers(NOW - TOLERANCE, NOW + TOLERANCE), timestamps))
    items = data.draw(st.lists(header_items(body, t), min_size=0, max_size=8))
    if data.draw(st.booleans()):  # a genuine pair somewhere among the other items
        items.insert(data.draw(st.integers(0, len(items))), f"t={t}")
        secret = data.draw(st.sampled_from(SECRETS))  # the old secret too (rotation)
        signature = f"v1={compute_signature(body, t, secret)}"
        items.insert(data.draw(st.integers(0, len(items))), signature)
    header = ",".join(items)
    got = outcome(body, header, list(SECRETS))
    if isinstance(got, str):
        assert got, "every refusal names a reason"
        assert not expected_accept(body, header), f"refused a genuine header: {header[:200]!r}"
    else:
        cases["signature: structured headers accepted"] += 1
        assert expected_accept(body, header), f"accepted a forged header: {header[:200]!r}"
        assert abs(got - NOW) <= TOLERANCE


@fuzz_settings(2000)
@given(header=st.one_of(st.text(max_size=300), st.none()), body=st.binary(max_size=256))
def test_arbitrary_text_never_passes_and_never_crashes(
    header: str | None, body: bytes, cases: Counter[str]
) -> None:
    cases["signature: arbitrary text"] += 1
    assert outcome(body, header, [SECRET]) in {
        "missing_signature",
        "malformed_signature",
        "no_v1_signature",
        "bad_signature",
        "timestamp_out_of_tolerance",
    }, f"random text was accepted as a signature: {header!r}"


@fuzz_settings(1000)
@given(body=st.binary(max_size=512), other=st.binary(max_size=512), skew=st.integers(-300, 300))
def test_a_signature_for_another_body_is_refused(
    body: bytes, other: bytes, skew: int, cases: Counter[str]
) -> None:
    cases["signature: another body"] += 1
    t = NOW + skew
    if other == body:  # often both empty: make it another body all the same
        other += b"\x00"
    header = f"t={t},v1={compute_signature(other, t, SECRET)}"
    assert outcome(body, header, [SECRET]) == "bad_signature"
    assert verify(other, header, [SECRET], now=NOW, tolerance=TOLERANCE) == t


@fuzz_settings(400)
@given(
    entries=st.integers(1_000, 20_000),
    position=st.floats(0, 1),
    right_t=st.booleans(),
)
def test_absurdly_long_headers_are_read_to_the_end(
    entries: int, position: float, right_t: bool, cases: Counter[str]
) -> None:
    """Thousands of `v1` entries: the genuine one is found wherever it sits, and a header
    of only forged entries is refused (no limit silently truncates the list)."""
    cases["signature: absurd header lengths"] += 1
    body = b'{"id":"evt_long"}'
    t = NOW if right_t else NOW - 10 * TOLERANCE
    forged = [f"v1={compute_signature(body, t, ROGUE_SECRET)}"] * entries
    genuine = f"v1={compute_signature(body, t, SECRET)}"
    forged.insert(int(position * entries), genuine)
    header = f"t={t}," + ",".join(forged)
    assert len(header) > 60_000
    if right_t:
        assert verify(body, header, [SECRET], now=NOW, tolerance=TOLERANCE) == t
    else:
        assert outcome(body, header, [SECRET]) == "timestamp_out_of_tolerance"
