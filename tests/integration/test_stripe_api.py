"""The Stripe client against a fake Stripe API on loopback: retries, Retry-After,
Stripe-Should-Retry, timeouts, the circuit breaker, headers, and no key in any text."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import structlog
from pydantic import SecretStr

from projectors.stripe_api.breaker import CircuitBreaker, State
from projectors.stripe_api.client import StripeClient
from projectors.stripe_api.errors import (
    CircuitOpen,
    StripeAuthError,
    StripeNotFound,
    StripeUnavailable,
)
from projectors.stripe_api.retry import RetryPolicy
from tests.support.fake_stripe import FakeStripe, serve
from tests.support.thin_events import meter_error_report

pytestmark = pytest.mark.integration
API_VERSION = "2025-10-29.clover"


class Sleeps:
    """Records the backoff the client asked for instead of waiting it out."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def fake() -> AsyncIterator[FakeStripe]:
    async with serve(FakeStripe()) as running:
        yield running


def client_for(
    fake: FakeStripe,
    *,
    key: str | None = None,
    sleeps: Sleeps | None = None,
    breaker: CircuitBreaker | None = None,
    max_retries: int = 3,
    read_timeout: float = 5.0,
) -> StripeClient:
    return StripeClient(
        api_key=SecretStr(key or fake.api_key),
        base_url=fake.url,
        api_version=API_VERSION,
        retry=RetryPolicy(max_retries=max_retries, base_delay=0.01, max_delay=0.05),
        breaker=breaker or CircuitBreaker(threshold=50, cooldown=60),
        timeout=httpx.Timeout(read_timeout, connect=2.0),
        sleep=sleeps or Sleeps(),
    )


async def test_get_sends_version_context_and_bearer_key(fake: FakeStripe) -> None:
    _, full = meter_error_report(context="acct_1Nv0FGQ9RKHgCVdK")
    fake.add_v2_event(full)
    async with client_for(fake) as client:
        body = await client.get(f"/v2/core/events/{full['id']}", context=full["context"])
    assert body == full
    [seen] = fake.requests_to("/v2/core/events/")
    assert seen.headers["stripe-version"] == API_VERSION
    assert seen.headers["stripe-context"] == "acct_1Nv0FGQ9RKHgCVdK"


async def test_5xx_is_retried_with_growing_backoff_then_succeeds(fake: FakeStripe) -> None:
    _, full = meter_error_report()
    fake.add_v2_event(full)
    fake.fail_next(2, status=500)
    sleeps = Sleeps()
    async with client_for(fake, sleeps=sleeps) as client:
        body = await client.get(f"/v2/core/events/{full['id']}")
    assert body["id"] == full["id"]
    assert len(fake.requests_to("/v2/")) == 3
    assert len(sleeps.delays) == 2
    assert all(0.005 <= d <= 0.05 for d in sleeps.delays)


async def test_429_waits_at_least_retry_after(fake: FakeStripe) -> None:
    _, full = meter_error_report()
    fake.add_v2_event(full)
    fake.fail_next(1, status=429, headers={"Retry-After": "2"})
    sleeps = Sleeps()
    async with client_for(fake, sleeps=sleeps) as client:
        await client.get(f"/v2/core/events/{full['id']}")
    assert sleeps.delays == [2.0]


async def test_stripe_should_retry_false_stops_at_once(fake: FakeStripe) -> None:
    fake.fail_next(1, status=503, headers={"Stripe-Should-Retry": "false"})
    async with client_for(fake) as client:
        with pytest.raises(StripeUnavailable, match="HTTP 503"):
            await client.get("/v2/core/events/evt_test_x")
    assert len(fake.seen) == 1


async def test_stripe_should_retry_true_retries_even_a_4xx(fake: FakeStripe) -> None:
    _, full = meter_error_report()
    fake.add_v2_event(full)
    fake.fail_next(1, status=400, headers={"Stripe-Should-Retry": "true"})
    async with client_for(fake) as client:
        assert (await client.get(f"/v2/core/events/{full['id']}"))["id"] == full["id"]
    assert len(fake.seen) == 2


async def test_retries_are_bounded(fake: FakeStripe) -> None:
    fake.fail_next(10, status=502)
    async with client_for(fake, max_retries=2) as client:
        with pytest.raises(StripeUnavailable, match="gave up after 3 attempts: HTTP 502"):
            await client.get("/v2/core/events/evt_test_x")
    assert len(fake.seen) == 3


async def test_a_slow_answer_times_out_and_is_retried(fake: FakeStripe) -> None:
    _, full = meter_error_report()
    fake.add_v2_event(full)
    # The timeout is long enough for an answer on a busy machine (a second attempt that
    # also timed out would make three), the stall far longer than it.
    fake.fail_next(1, status=None, delay=10.0)
    async with client_for(fake, read_timeout=2.0) as client:
        body = await client.get(f"/v2/core/events/{full['id']}")
    assert body["id"] == full["id"]
    assert len(fake.seen) == 2


async def test_404_is_not_retried_and_does_not_trip_the_breaker(fake: FakeStripe) -> None:
    breaker = CircuitBreaker(threshold=1, cooldown=60)
    async with client_for(fake, breaker=breaker) as client:
        with pytest.raises(StripeNotFound, match="No such event: evt_test_gone") as missing:
            await client.get("/v2/core/events/evt_test_gone")
    assert missing.value.status == 404
    assert missing.value.request_id is not None
    assert len(fake.seen) == 1
    assert breaker.state is State.CLOSED


async def test_circuit_opens_refuses_without_calling_then_probes_and_closes(
    fake: FakeStripe,
) -> None:
    _, full = meter_error_report()
    fake.add_v2_event(full)
    clock = Clock()
    breaker = CircuitBreaker(threshold=3, cooldown=30, clock=clock)
    fake.fail_next(3, status=500)
    path = f"/v2/core/events/{full['id']}"
    async with client_for(fake, breaker=breaker, max_retries=5) as client:
        with pytest.raises(CircuitOpen):
            await client.get(path)  # three 500s open it before the retries run out
        assert len(fake.seen) == 3
        with pytest.raises(CircuitOpen) as refused:
            await client.get(path)
        assert len(fake.seen) == 3  # refused without a request
        assert refused.value.retry_in == pytest.approx(30)
        clock.now += 30
        assert (await client.get(path))["id"] == full["id"]  # the half-open trial
        assert breaker.state is State.CLOSED
    assert len(fake.seen) == 4


async def test_the_key_is_in_no_log_line_and_no_exception(fake: FakeStripe) -> None:
    wrong = "sk_test_51WrongKeyThatMustNeverBeLogged"
    fake.fail_next(1, status=500)
    with structlog.testing.capture_logs() as logs:
        async with client_for(fake, key=wrong) as client:
            with pytest.raises(StripeAuthError) as refused:
                await client.get("/v2/core/events/evt_test_x")
            text = f"{refused.value} {refused.value!r} {client!r}"
    assert refused.value.status == 401
    assert len(logs) == 2
    assert wrong not in text
    assert all(wrong not in repr(line) for line in logs)
    assert "Invalid API Key" in str(refused.value)
