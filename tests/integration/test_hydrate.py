"""Thin-event hydration against the fake Stripe API and a real PostgreSQL cache."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from aiokafka import TopicPartition
from pydantic import SecretStr

from projectors.base import HydrationUnavailable, PoisonRecord, Record
from projectors.batch import BatchApplier
from projectors.meters import projection as meters
from projectors.migrate import ensure_runtime
from projectors.stopping import Abandoned
from projectors.stripe_api.breaker import CircuitBreaker
from projectors.stripe_api.client import StripeClient
from projectors.stripe_api.hydrate import Hydrator
from projectors.stripe_api.retry import RetryPolicy
from tests.fixtures.records import as_record
from tests.support.audit_projection import NoDeadLetters
from tests.support.fake_stripe import FakeStripe, serve
from tests.support.thin_events import meter_error_report
from tests.support.wait import eventually

pytestmark = pytest.mark.integration


async def _no_wait(_: float) -> None:
    return None


@pytest.fixture
async def fake() -> AsyncIterator[FakeStripe]:
    async with serve(FakeStripe()) as running:
        yield running


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    conn = await asyncpg.connect(database_url)
    try:
        await ensure_runtime(conn)
    finally:
        await conn.close()
    created = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    yield created
    await created.close()


def make_client(fake: FakeStripe, *, key: str | None = None, threshold: int = 50) -> StripeClient:
    return StripeClient(
        api_key=SecretStr(key or fake.api_key),
        base_url=fake.url,
        api_version="2025-10-29.clover",
        retry=RetryPolicy(max_retries=2, base_delay=0.01),
        breaker=CircuitBreaker(threshold=threshold, cooldown=60),
        timeout=httpx.Timeout(5.0),
        sleep=_no_wait,
    )


def thin_record(thin: dict[str, Any]) -> Record:
    # The receiver logs thin events too; `as_record` needs integer seconds for its stamp.
    return as_record({**thin, "created": 1_764_064_800})


async def test_hydrates_once_then_serves_the_cache(fake: FakeStripe, pool: asyncpg.Pool) -> None:
    thin, full = meter_error_report(identifiers=("usage-1", "usage-2"))
    fake.add_v2_event(full)
    record = thin_record(thin)
    async with make_client(fake) as client:
        hydrator = Hydrator(pool, client)
        first = await hydrator(record)
        second = await hydrator(record)
    assert len(fake.requests_to("/v2/core/events/")) == 1  # the second call made no request
    assert first.value == second.value
    hydrated = orjson.loads(first.value)
    assert hydrated["data"] == full["data"]
    assert hydrated["related_object"] == full["related_object"]
    assert (first.topic, first.partition, first.offset, first.headers) == (
        record.topic,
        record.partition,
        record.offset,
        record.headers,
    )
    cached = await pool.fetchval(
        "SELECT body->'data'->'reason'->>'error_count' FROM lattice.hydrated_events WHERE id=$1",
        full["id"],
    )
    assert cached == "2"


async def test_a_nul_character_in_stripes_answer_is_stored_not_a_dead_letter(
    fake: FakeStripe, pool: asyncpg.Pool
) -> None:
    """jsonb refuses `\\u0000`: an error message Stripe echoes with a NUL in it (from the
    app's own identifier) is kept with U+FFFD in its place, and the event is applied; a
    backslash and `u0000` written as text stay as they are."""
    thin, full = meter_error_report(identifiers=("usage-\x00-1", "usage-\\u0000"))
    fake.add_v2_event(full)
    async with make_client(fake) as client:
        hydrated = orjson.loads((await Hydrator(pool, client)(thin_record(thin))).value)
    samples = hydrated["data"]["reason"]["error_types"][0]["sample_errors"]
    assert [s["request"]["identifier"] for s in samples] == ["usage-\ufffd-1", "usage-\\u0000"]
    assert hydrated["data"]["reason"]["error_count"] == 2


async def test_a_replay_without_any_key_never_calls_stripe(
    fake: FakeStripe, pool: asyncpg.Pool
) -> None:
    thin, full = meter_error_report()
    fake.add_v2_event(full)
    async with make_client(fake) as client:
        live = await Hydrator(pool, client)(thin_record(thin))
    replay = await Hydrator(pool, None)(thin_record(thin))
    assert replay.value == live.value
    assert len(fake.seen) == 1


async def test_snapshot_events_and_full_events_pass_unchanged(
    fake: FakeStripe, pool: asyncpg.Pool
) -> None:
    _, full = meter_error_report()
    snapshot = as_record(
        {
            "id": "evt_1",
            "object": "event",
            "type": "invoice.paid",
            "created": 1_764_064_800,
            "data": {"object": {"id": "in_1"}},
        }
    )
    already_full = thin_record(full)
    async with make_client(fake) as client:
        hydrator = Hydrator(pool, client)
        assert await hydrator(snapshot) is snapshot
        assert await hydrator(already_full) is already_full
    assert fake.seen == []


async def test_connect_events_are_fetched_in_their_account_context(
    fake: FakeStripe, pool: asyncpg.Pool
) -> None:
    thin, full = meter_error_report(context="acct_1Nv0FGQ9RKHgCVdK")
    fake.add_v2_event(full)
    async with make_client(fake) as client:
        hydrated = orjson.loads((await Hydrator(pool, client)(thin_record(thin))).value)
    assert hydrated["context"] == "acct_1Nv0FGQ9RKHgCVdK"
    assert fake.seen[0].headers["stripe-context"] == "acct_1Nv0FGQ9RKHgCVdK"


async def test_404_is_poison_and_a_refused_key_waits(fake: FakeStripe, pool: asyncpg.Pool) -> None:
    thin, _ = meter_error_report()  # never added: Stripe does not know it
    async with make_client(fake) as client:
        with pytest.raises(PoisonRecord, match=r"HTTP 404: No such event"):
            await Hydrator(pool, client)(thin_record(thin))
    # A revoked or mistyped key is not the record's fault: dead-lettering would lose every
    # thin event until someone notices; the projector waits, saying why.
    async with make_client(fake, key="sk_test_revoked_key_000") as client:
        with pytest.raises(
            HydrationUnavailable, match=r"refuses LATTICE_STRIPE_API_KEY"
        ) as refused:
            await Hydrator(pool, client)(thin_record(thin))
    assert "HTTP 401: Invalid API Key" in str(refused.value)
    assert "sk_test_revoked_key_000" not in str(refused.value)
    assert await pool.fetchval("SELECT count(*) FROM lattice.hydrated_events") == 0


async def test_a_key_without_access_to_events_waits_an_account_that_revoked_us_is_poison(
    fake: FakeStripe, pool: asyncpg.Pool
) -> None:
    """A restricted key lacking the events permission gets 403 for every thin event:
    dead-lettering them would lose them all. In an account's context, 403 is that account
    having revoked access: its record can never be fetched."""
    platform, _ = meter_error_report()
    connected, _ = meter_error_report(context="acct_1Nv0FGQ9RKHgCVdK")
    async with make_client(fake) as client:
        fake.fail_next(3, status=403)
        with pytest.raises(HydrationUnavailable, match=r"refuses LATTICE_STRIPE_API_KEY.*403"):
            await Hydrator(pool, client)(thin_record(platform))
        fake.fail_next(3, status=403)
        with pytest.raises(PoisonRecord, match=r"HTTP 403"):
            await Hydrator(pool, client)(thin_record(connected))


async def test_a_refused_request_waits_an_event_of_the_other_mode_is_poison_unasked(
    fake: FakeStripe, pool: asyncpg.Pool
) -> None:
    """A 400 for a platform event's well-formed id is the request every thin event gets
    (an API version Stripe does not know), not the record: wait. A live event with a test
    key (or the reverse) Stripe cannot find: dead-letter it saying so, without asking."""
    thin, full = meter_error_report()
    fake.add_v2_event(full)
    async with make_client(fake) as client:
        fake.fail_next(1, status=400)
        with pytest.raises(HydrationUnavailable, match=r"HTTP 400.*LATTICE_STRIPE_API_VERSION"):
            await Hydrator(pool, client)(thin_record(thin))
        # A well-formed account's context: the same request, refused alike: wait.
        theirs, _ = meter_error_report(context="acct_1Nv0FGQ9RKHgCVdK")
        fake.fail_next(1, status=400)
        with pytest.raises(HydrationUnavailable, match=r"HTTP 400"):
            await Hydrator(pool, client)(thin_record(theirs))
        # A context no account has the form of (it comes from the record): its own fault.
        odd, _ = meter_error_report(context="acct_1Nv0FG/../x")
        fake.fail_next(1, status=400)
        with pytest.raises(PoisonRecord, match=r"HTTP 400"):
            await Hydrator(pool, client)(thin_record(odd))
        live = thin_record({**thin, "livemode": True})
        with pytest.raises(PoisonRecord, match=r"live-mode event, but .* is a test-mode key"):
            await Hydrator(pool, client)(live)
    assert len(fake.requests_to("/v2/core/events/")) == 3
    async with make_client(fake, key="sk_live_" + fake.api_key[8:]) as client:
        with pytest.raises(PoisonRecord, match=r"test-mode event, but .* is a live-mode key"):
            await Hydrator(pool, client)(thin_record(thin))
    assert len(fake.requests_to("/v2/core/events/")) == 3


async def test_a_redirect_is_never_taken_for_an_answer(
    fake: FakeStripe, pool: asyncpg.Pool
) -> None:
    """An API base pointing at something that redirects (http:// of a proxy, a login page)."""
    thin, full = meter_error_report()
    fake.add_v2_event(full)
    fake.fail_next(1, status=302, headers={"Location": "https://login.example.com/"})
    async with make_client(fake) as client:
        with pytest.raises(HydrationUnavailable, match=r"302 redirect to .*login.example.com"):
            await Hydrator(pool, client)(thin_record(thin))
    assert await pool.fetchval("SELECT count(*) FROM lattice.hydrated_events") == 0


async def test_an_event_another_process_caches_meanwhile_is_served_from_the_cache(
    fake: FakeStripe, pool: asyncpg.Pool, database_url: str
) -> None:
    """Two processes hydrating one event (the live meters projector and a replay): ours
    waits for the other's insert and then must read what it stored."""
    thin, full = meter_error_report()
    fake.add_v2_event(full)
    other = await asyncpg.connect(database_url)
    try:
        async with other.transaction():
            await other.execute(
                "INSERT INTO lattice.hydrated_events (id, type, context, body) "
                "VALUES ($1, $2, NULL, $3::jsonb)",
                full["id"],
                full["type"],
                orjson.dumps(full).decode(),
            )
            async with make_client(fake) as client:
                hydrating = asyncio.create_task(Hydrator(pool, client)(thin_record(thin)))

                async def waiting_for_the_other() -> int:
                    return int(
                        await other.fetchval(
                            "SELECT count(*) FROM pg_stat_activity "
                            "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                        )
                    )

                await eventually(waiting_for_the_other, lambda n: n == 1, what="insert waits")
        hydrated = await hydrating
    finally:
        await other.close()
    assert orjson.loads(hydrated.value) == orjson.loads(orjson.dumps(full))


async def test_rate_limited_waits_even_when_stripe_says_not_to_retry(
    fake: FakeStripe, pool: asyncpg.Pool
) -> None:
    thin, full = meter_error_report()
    fake.add_v2_event(full)
    fake.fail_next(1, status=429, headers={"Stripe-Should-Retry": "false"})
    async with make_client(fake) as client:
        hydrator = Hydrator(pool, client)
        with pytest.raises(HydrationUnavailable, match="HTTP 429"):
            await hydrator(thin_record(thin))
        assert orjson.loads((await hydrator(thin_record(thin))).value)["data"]


async def test_stripes_retry_after_reaches_the_runner(fake: FakeStripe, pool: asyncpg.Pool) -> None:
    thin, full = meter_error_report()
    fake.add_v2_event(full)
    fake.fail_next(3, status=429, headers={"Retry-After": "7"})
    async with make_client(fake) as client:
        with pytest.raises(HydrationUnavailable, match="HTTP 429") as refused:
            await Hydrator(pool, client)(thin_record(thin))
    assert refused.value.retry_after == 7.0


async def test_the_runner_waits_at_least_as_long_as_stripe_asked(pool: asyncpg.Pool) -> None:
    thin, full = meter_error_report()
    calls: list[float] = []

    async def rate_limited_once(record: Record) -> Record:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) == 1:
            raise HydrationUnavailable("HTTP 429", retry_after=1.5)
        return as_record({**full, "created": 1_764_064_800})

    applier = meters_applier(pool, rate_limited_once)
    await asyncio.wait_for(applier.prepare({TopicPartition("t", 0): [thin_record(thin)]}), 10)
    assert len(calls) == 2
    assert calls[1] - calls[0] >= 1.5  # not the runner's own 0.5 s


async def test_a_cancelled_trial_call_does_not_keep_the_circuit_open(
    fake: FakeStripe, pool: asyncpg.Pool
) -> None:
    thin, full = meter_error_report()
    fake.add_v2_event(full)
    breaker = CircuitBreaker(threshold=1, cooldown=0)
    fake.fail_next(1, status=500)
    fake.fail_next(1, status=None, delay=5)  # the trial call: slow, and its caller gives up
    async with make_client(fake) as client:
        client.breaker = breaker
        client.retry = RetryPolicy(max_retries=0)
        with pytest.raises(HydrationUnavailable):
            await Hydrator(pool, client)(thin_record(thin))  # opens the circuit
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(Hydrator(pool, client)(thin_record(thin)), 0.5)
        # The next call is a new trial, not "circuit open" for good.
        assert orjson.loads((await Hydrator(pool, client)(thin_record(thin))).value)["data"]


async def test_stripe_down_or_circuit_open_means_wait_not_skip(
    fake: FakeStripe, pool: asyncpg.Pool
) -> None:
    thin, full = meter_error_report()
    fake.add_v2_event(full)
    fake.fail_next(3, status=503)
    async with make_client(fake, threshold=10) as client:
        hydrator = Hydrator(pool, client)
        with pytest.raises(HydrationUnavailable, match="gave up after 3 attempts: HTTP 503"):
            await hydrator(thin_record(thin))
    fake.fail_next(2, status=500)
    async with make_client(fake, threshold=2) as client:
        hydrator = Hydrator(pool, client)
        with pytest.raises(HydrationUnavailable, match="circuit open"):
            await hydrator(thin_record(thin))
        seen = len(fake.seen)
        with pytest.raises(HydrationUnavailable, match="circuit open"):
            await hydrator(thin_record(thin))
        assert len(fake.seen) == seen  # refused without calling


async def test_no_key_and_no_cache_means_wait_with_a_clear_message(pool: asyncpg.Pool) -> None:
    thin, _ = meter_error_report()
    with pytest.raises(HydrationUnavailable, match="LATTICE_STRIPE_API_KEY is not set"):
        await Hydrator(pool, None)(thin_record(thin))


async def test_an_answer_that_is_not_that_event_is_poison(
    fake: FakeStripe, pool: asyncpg.Pool
) -> None:
    thin, _ = meter_error_report()
    _, other = meter_error_report()
    fake.v2_events[thin["id"]] = other
    async with make_client(fake) as client:
        with pytest.raises(PoisonRecord, match=f"answered event {other['id']}"):
            await Hydrator(pool, client)(thin_record(thin))
    fake.v2_events[thin["id"]] = {"id": thin["id"], "object": "event"}
    async with make_client(fake) as client:
        with pytest.raises(PoisonRecord, match="not a v2 event"):
            await Hydrator(pool, client)(thin_record(thin))
    assert await pool.fetchval("SELECT count(*) FROM lattice.hydrated_events") == 0


def meters_applier(
    pool: asyncpg.Pool, hydrate: Any, stop: asyncio.Event | None = None
) -> BatchApplier:
    """The runner's batch step for the meters projection, with `hydrate` as its hydrator."""
    return BatchApplier(
        meters,
        pool,
        NoDeadLetters(),
        schema="projections",
        projector_key="meters",
        hydrate=hydrate,
        stop=stop,
    )


async def test_meters_fetches_only_the_thin_events_it_reads(pool: asyncpg.Pool) -> None:
    """Without a key (or with Stripe down) a thin event the meters reducer ignores must not
    hold up its partition: only the two error-report types are fetched."""
    account = "acct_1Nv0FGQ9RKHgCVdK"
    other = {  # a v2 thin event of a type meters has no use for
        "id": "evt_test_65RAccountUpdated0000000001",
        "object": "v2.core.event",
        "type": "v2.core.account.updated",
        "created": 1_764_064_800,
        "livemode": False,
        "related_object": {
            "id": account,
            "type": "v2.core.account",
            "url": f"/v2/core/accounts/{account}",
        },
    }
    report, _ = meter_error_report()
    stop = asyncio.Event()
    applier = meters_applier(pool, Hydrator(pool, None), stop)  # no key: a fetch would wait
    tp = TopicPartition("stripe.events", 0)
    prepared = await asyncio.wait_for(applier.prepare({tp: [as_record(other)]}), 10)
    assert (prepared.records, prepared.dead) == (1, [])
    # An error report does need its body: it waits (until stopped), never skipped.
    waiting = asyncio.ensure_future(applier.prepare({tp: [thin_record(report)]}))
    await asyncio.sleep(1.0)  # the wait under test, not a poll for a result
    assert not waiting.done()
    stop.set()
    with pytest.raises(Abandoned):  # stopped while waiting
        await asyncio.wait_for(waiting, 10)
