"""The Stripe client's pure parts: the circuit breaker, the retry policy, redaction."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from projectors.stripe_api.breaker import CircuitBreaker, State
from projectors.stripe_api.client import StripeClient, _query
from projectors.stripe_api.errors import CircuitOpen, StripeAPIError, redact
from projectors.stripe_api.retry import RetryPolicy, parse_retry_after


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def state(breaker: CircuitBreaker) -> State:
    """The state, read through a call so mypy does not narrow it between asserts."""
    return breaker.state


def test_breaker_opens_after_threshold_failures_in_a_row() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=3, cooldown=10, clock=clock)
    for _ in range(2):
        breaker.before_call()
        breaker.record_failure()
    assert state(breaker) is State.CLOSED
    breaker.record_failure()
    assert state(breaker) is State.OPEN
    with pytest.raises(CircuitOpen) as refused:
        breaker.before_call()
    assert refused.value.retry_in == pytest.approx(10)
    assert "3 failures in a row" in str(refused.value)


def test_a_success_resets_the_count() -> None:
    breaker = CircuitBreaker(threshold=2, cooldown=10, clock=Clock())
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert state(breaker) is State.CLOSED
    assert breaker.failures == 1


def test_half_open_lets_one_trial_through_and_its_outcome_decides() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, cooldown=5, clock=clock)
    breaker.record_failure()
    clock.now += 5
    assert state(breaker) is State.HALF_OPEN
    breaker.before_call()  # the trial
    with pytest.raises(CircuitOpen):
        breaker.before_call()  # a second caller meanwhile is refused
    breaker.record_failure()  # the trial failed: open for another cooldown
    assert state(breaker) is State.OPEN
    clock.now += 5
    breaker.before_call()
    breaker.record_success()
    assert state(breaker) is State.CLOSED
    breaker.before_call()


@pytest.mark.parametrize(
    ("status", "hint", "retry"),
    [
        (500, None, True),
        (503, None, True),
        (429, None, True),
        (409, None, True),
        (400, None, False),
        (404, None, False),
        (503, "false", False),
        (400, "true", True),
    ],
)
def test_should_retry_follows_status_and_stripe_should_retry(
    status: int, hint: str | None, retry: bool
) -> None:
    headers = {} if hint is None else {"stripe-should-retry": hint}
    assert RetryPolicy().should_retry_status(status, headers) is retry


def test_backoff_grows_exponentially_within_jitter_bounds_and_is_capped() -> None:
    low = RetryPolicy(base_delay=0.5, max_delay=4, random=lambda: 0.0)
    high = RetryPolicy(base_delay=0.5, max_delay=4, random=lambda: 0.999999)
    assert [low.delay(n) for n in (1, 2, 3, 4, 5)] == [0.25, 0.5, 1.0, 2.0, 2.0]
    assert [round(high.delay(n), 3) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 4.0, 4.0]


def test_retry_after_is_a_floor_but_capped() -> None:
    policy = RetryPolicy(base_delay=0.1, max_retry_after=30, random=lambda: 0.5)
    assert policy.delay(1, {"retry-after": "7"}) == 7
    assert policy.delay(1, {"retry-after": "3600"}) == 30
    assert policy.delay(1, {"retry-after": "soon"}) == pytest.approx(0.075)
    assert parse_retry_after(None) is None
    assert parse_retry_after("-1") is None
    assert parse_retry_after(" 2.5 ") == 2.5


def test_query_spells_lists_the_stripe_way() -> None:
    assert _query({"limit": 100, "types[]": [], "created[gte]": 5}) == [
        ("limit", "100"),
        ("created[gte]", "5"),
    ]
    assert _query({"types": ["invoice.paid", "invoice.created"]}) == [
        ("types[]", "invoice.paid"),
        ("types[]", "invoice.created"),
    ]


def test_redact_hides_the_key() -> None:
    assert redact("bad key sk_test_abc123 given", "sk_test_abc123") == "bad key *** given"
    assert redact("nothing here", None) == "nothing here"


@pytest.mark.parametrize(
    "path",
    [
        "https://evil.example/v2/core/events?page=2",  # a `next_page_url` to another host
        "//evil.example/v2/core/events",
        "/v1/invoices/../lines",  # an invoice id `..` from an event
        "/v1/invoices/%2E%2E/lines",
        "v1/events",
        "/v1/invoices/in_1\r\nX-Injected: 1/lines",  # control characters
    ],
)
async def test_a_path_off_the_api_is_refused_before_the_key_is_sent(path: str) -> None:
    """Paths come from Stripe's answers (`next_page_url`) and from events' ids: none may
    send the key to another host or climb the API's paths. Refused before any request
    (the base URL here has no server: a request would fail differently)."""
    async with StripeClient(
        api_key=SecretStr("sk_test_fake"),
        base_url="http://127.0.0.1:9",
        api_version="2025-10-29.clover",
        retry=RetryPolicy(max_retries=0, base_delay=0.01),
    ) as client:
        with pytest.raises(StripeAPIError, match="not a path of the API"):
            await client.get(path)
