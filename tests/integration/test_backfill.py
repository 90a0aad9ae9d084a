"""`lattice backfill` after a simulated outage, on real Kafka and PostgreSQL with the fake
Stripe API: exactly the missing events come back, once, and the projections then equal
those of a run that never missed them."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from pydantic import SecretStr

from deploy.settings import Settings
from deploy.stack.topics import delete_topics, ensure_topics
from ingest.record import HEADER_ACCOUNT, HEADER_EVENT_ID, HEADER_SOURCE
from projectors import catalog
from projectors.migrate import migrate
from projectors.service import run_projections
from projectors.stripe_api import backfill as backfill_module
from projectors.stripe_api import ledger
from projectors.stripe_api.backfill import BackfillOptions, _record, backfill
from projectors.stripe_api.client import StripeClient
from projectors.stripe_api.ledger import BackfillError
from projectors.stripe_api.logtail import end_offsets
from projectors.stripe_api.retry import RetryPolicy
from tests.conftest import Stack, _with_database
from tests.support.fake_stripe import FakeStripe, serve
from tests.support.kafka import read_all
from tests.support.stripe_stream import BASE_TIME, StreamEvent, produce, records, stream
from tests.support.thin_events import meter_error_report
from tests.support.wait import eventually

pytestmark = pytest.mark.integration
CONNECT = "acct_1Nv0FGQ9RKHgCVdK"
SINCE = datetime.fromtimestamp(BASE_TIME, UTC)
PROJECTIONS = ("events", "subscriptions", "invoices")
# Compared row for row; where a row sits in the log (offsets, receipt time) may differ.
TABLES = {
    "events": "id, type, created, account, livemode, api_version, object_id",
    "subscriptions": "*",
    "subscription_items": "*",
    "invoices": "*",
    "invoice_lines": "*",
}


@pytest.fixture
async def fake() -> AsyncIterator[FakeStripe]:
    async with serve(FakeStripe()) as running:
        yield running


def client_for(fake: FakeStripe) -> StripeClient:
    return StripeClient(
        api_key=SecretStr(fake.api_key),
        base_url=fake.url,
        api_version="2025-10-29.clover",
        retry=RetryPolicy(base_delay=0.01),
    )


def unique_events(events: Sequence[StreamEvent]) -> dict[str, dict[str, Any]]:
    return {e.event["id"]: e.event for e in events}


async def project_until_caught_up(settings: Settings) -> None:
    """Run the projections until each has stored the log's end as its position."""
    projections = catalog.select(list(PROJECTIONS))
    ends = sum((await _ends(settings)).values())
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_projections(settings, projections, stop=stop, handle_signals=False)
    )

    async def positions() -> list[int]:
        conn = await asyncpg.connect(settings.require_database_url())
        try:
            rows = await conn.fetch(
                "SELECT projector, sum(next_offset) AS done FROM lattice.offsets "
                "WHERE topic = $1 GROUP BY projector",
                settings.topic,
            )
        except asyncpg.UndefinedTableError:
            return []
        finally:
            await conn.close()
        return [int(r["done"]) for r in rows]

    try:
        await eventually(
            positions,
            # At least: a backfill running beside it may append more meanwhile.
            lambda done: len(done) == len(PROJECTIONS) and all(d >= ends for d in done),
            timeout=60,
            what="projections caught up",
        )
    finally:
        stop.set()
        await task


async def migrate_the_index(settings: Settings) -> None:
    """The events projection's tables (the log's index backfill reads), with no rows."""
    conn = await asyncpg.connect(settings.require_database_url())
    try:
        await migrate(conn, catalog.select(["events"]))
    finally:
        await conn.close()


async def _ends(settings: Settings) -> dict[int, int]:
    return await end_offsets(settings.kafka_bootstrap, settings.topic)


async def tables(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    conn = await asyncpg.connect(database_url)
    try:
        return {
            table: [
                tuple(r)
                for r in await conn.fetch(f"SELECT {columns} FROM projections.{table} ORDER BY 1")
            ]
            for table, columns in TABLES.items()
        }
    finally:
        await conn.close()


@pytest.fixture
async def clean_run(stack: Stack, settings: Settings, unique: str) -> AsyncIterator[Settings]:
    """A second topic and database, for the run that never missed anything."""
    topic, database = f"{unique}.clean.stripe.events", f"{unique}_clean"
    await ensure_topics(stack.kafka_bootstrap, [topic], partitions=3)
    admin = await asyncpg.connect(stack.database_url)
    await admin.execute(f'CREATE DATABASE "{database}"')
    await admin.close()
    yield settings.model_copy(
        update={"topic": topic, "database_url": _with_database(stack.database_url, database)}
    )
    admin = await asyncpg.connect(stack.database_url)
    await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    await admin.close()
    await delete_topics(stack.kafka_bootstrap, [topic])


async def test_backfill_after_an_outage_restores_exactly_the_missing_events(
    fake: FakeStripe, settings: Settings, clean_run: Settings
) -> None:
    delivered_all = stream(64, seed=11, thin_every=10**6)
    everything = unique_events(delivered_all)
    outage = range(20, 40)
    delivered = [e for i, e in enumerate(delivered_all) if i not in outage]
    missed = set(everything) - set(unique_events(delivered))
    assert any(everything[m].get("account") == CONNECT for m in missed)
    fake.add_v1_events(list(everything.values()))

    await produce(clean_run.kafka_bootstrap, clean_run.topic, records(delivered_all))
    await project_until_caught_up(clean_run)
    await produce(settings.kafka_bootstrap, settings.topic, records(delivered))
    await project_until_caught_up(settings)

    clean = await tables(clean_run.require_database_url())
    assert all(clean.values())
    assert await tables(settings.require_database_url()) != clean  # the outage shows

    options = BackfillOptions(since=SINCE, accounts=(CONNECT,), page_size=10)
    async with client_for(fake) as client:
        first = await backfill(settings, client, options)
        # Run again before the projector indexed them: the ledger still knows.
        again = await backfill(
            settings, client, BackfillOptions(since=SINCE, accounts=(CONNECT,), allow_lag=True)
        )
    assert (first.missing, first.appended, first.listed) == (
        len(missed),
        len(missed),
        len(everything),
    )
    assert first.in_log == len(everything) - len(missed)
    assert first.pages >= len(everything) // 10
    assert (again.missing, again.appended, again.earlier_backfill) == (0, 0, len(missed))

    log = await read_all(settings.kafka_bootstrap, settings.topic)
    backfilled = [r for r in log if r.headers.get(HEADER_SOURCE) == b"backfill"]
    assert sorted(r.headers[HEADER_EVENT_ID].decode() for r in backfilled) == sorted(missed)
    assert {r.headers["lattice-endpoint"] for r in backfilled} == {b"backfill"}

    await project_until_caught_up(settings)
    assert await tables(settings.require_database_url()) == clean
    async with client_for(fake) as client:
        last = await backfill(settings, client, options)
    assert (last.missing, last.in_log) == (0, len(everything))


async def _an_outage(fake: FakeStripe, settings: Settings, *, seed: int) -> set[str]:
    """40 events Stripe knows, 10 of them never delivered; the rest logged and projected.
    The ids of the missed ones."""
    delivered_all = stream(40, seed=seed, thin_every=10**6)
    everything = unique_events(delivered_all)
    delivered = [e for i, e in enumerate(delivered_all) if not 10 <= i < 20]
    fake.add_v1_events(list(everything.values()))
    await produce(settings.kafka_bootstrap, settings.topic, records(delivered))
    await project_until_caught_up(settings)
    return set(everything) - set(unique_events(delivered))


async def _backfilled_ids(settings: Settings) -> list[str]:
    log = await read_all(settings.kafka_bootstrap, settings.topic)
    return sorted(
        r.headers[HEADER_EVENT_ID].decode()
        for r in log
        if r.headers.get(HEADER_SOURCE) == b"backfill"
    )


async def test_events_indexed_while_the_listing_ran_are_not_appended(
    fake: FakeStripe, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listing a month takes a while, and Stripe's retries land meanwhile: what the index
    has by the time of appending is not appended again. Here the index "catches up" just
    after the listing (it answered nothing while the listing ran)."""
    missed = await _an_outage(fake, settings, seed=17)

    real_find = backfill_module._find_missing

    async def nothing_indexed_yet(*_: Any) -> tuple[set[str], set[str]]:
        return set(), set()

    async def find_with_a_lagging_index(*args: Any) -> Any:
        with monkeypatch.context() as patched:
            patched.setattr(ledger, "known", nothing_indexed_yet)
            return await real_find(*args)

    monkeypatch.setattr(backfill_module, "_find_missing", find_with_a_lagging_index)
    options = BackfillOptions(since=SINCE, accounts=(CONNECT,), page_size=10)
    async with client_for(fake) as client:
        done = await backfill(settings, client, options)
    assert (done.appended, done.missing) == (len(missed), len(missed))
    assert await _backfilled_ids(settings) == sorted(missed)


async def test_an_account_stripe_will_not_list_is_reported_and_the_rest_appended(
    fake: FakeStripe, settings: Settings
) -> None:
    missed = await _an_outage(fake, settings, seed=19)
    gone = "acct_1DisconnectedAcc"
    fake.inaccessible.add(gone)
    options = BackfillOptions(since=SINCE, accounts=(gone, CONNECT), page_size=10)
    async with client_for(fake) as client:
        done = await backfill(settings, client, options)
    assert list(done.refused) == [gone]
    assert "does not have access to account" in done.refused[gone]
    assert done.appended == len(missed)  # the platform's and CONNECT's, listed after it
    assert await _backfilled_ids(settings) == sorted(missed)


async def test_a_run_killed_between_ack_and_ledger_appends_nothing_twice(
    fake: FakeStripe, settings: Settings
) -> None:
    events = list(unique_events(stream(12, seed=3, thin_every=10**6)).values())
    events = [e for e in events if "account" not in e]
    fake.add_v1_events(events)
    conn = await asyncpg.connect(settings.require_database_url())
    try:
        await migrate(conn, catalog.select(["events"]))
        # The killed run: the broker took `landed`, the ledger still says `sending` for
        # them and for `lost`, which never reached the broker.
        landed, lost = events[:3], events[3:5]
        await produce(
            settings.kafka_bootstrap,
            settings.topic,
            [_record(dict(e), None, "backfill") for e in landed],
        )
        await ledger.mark_sending(
            conn,
            settings.topic,
            [e["id"] for e in landed + lost],
            [e["created"] for e in landed + lost],
        )
    finally:
        await conn.close()

    with pytest.raises(BackfillError, match=r"events projector is 3 records behind .* after 0.5 s"):
        async with client_for(fake) as client:
            await backfill(settings, client, BackfillOptions(since=SINCE, lag_wait=0.5))
    async with client_for(fake) as client:
        report = await backfill(settings, client, BackfillOptions(since=SINCE, allow_lag=True))
    assert report.settled == len(landed)
    assert report.appended == len(events) - len(landed)
    log = await read_all(settings.kafka_bootstrap, settings.topic)
    assert sorted(r.headers[HEADER_EVENT_ID].decode() for r in log) == sorted(
        e["id"] for e in events
    )


async def test_types_filter_and_dry_run(fake: FakeStripe, settings: Settings) -> None:
    events = [
        e
        for e in unique_events(stream(30, seed=5, thin_every=10**6)).values()
        if "account" not in e
    ]
    fake.add_v1_events(events)
    await migrate_the_index(settings)
    paid = [e["id"] for e in events if e["type"] == "invoice.paid"]
    async with client_for(fake) as client:
        report = await backfill(
            settings,
            client,
            BackfillOptions(since=SINCE, types=("invoice.paid",), dry_run=True, page_size=4),
        )
    assert (report.missing, report.appended) == (len(paid), 0)
    assert all(("types[]", "invoice.paid") in seen.query for seen in fake.requests_to("/v1/"))
    assert fake.requests_to("/v2/") == []  # no thin event is of those types

    assert any(name == "starting_after" for seen in fake.seen for name, _ in seen.query)
    assert await read_all(settings.kafka_bootstrap, settings.topic) == []

    # Thin types only: no snapshot listing (an empty `types[]` would list them all).
    fake.seen.clear()
    async with client_for(fake) as client:
        thin_only = await backfill(
            settings,
            client,
            BackfillOptions(since=SINCE, types=("v1.billing.meter.error_report_triggered",)),
        )
    assert thin_only.listed == 0
    assert fake.requests_to("/v1/") == []
    assert len(fake.requests_to("/v2/core/events")) == 1
    # Both kinds: Stripe is asked for the snapshot types alone.
    fake.seen.clear()
    async with client_for(fake) as client:
        await backfill(
            settings,
            client,
            BackfillOptions(
                since=SINCE, types=("invoice.paid", "v1.billing.meter.no_meter_found"), dry_run=True
            ),
        )
    assert [name for seen in fake.requests_to("/v1/") for name, _ in seen.query if "types" in name]
    assert all(
        value == "invoice.paid"
        for seen in fake.requests_to("/v1/")
        for name, value in seen.query
        if name == "types[]"
    )
    assert len(fake.requests_to("/v2/core/events")) == 1


async def test_without_the_log_index_backfill_refuses(fake: FakeStripe, settings: Settings) -> None:
    async with client_for(fake) as client:
        with pytest.raises(BackfillError, match=r"projections.events does not exist"):
            await backfill(settings, client, BackfillOptions(since=SINCE))
    assert fake.seen == []


async def test_events_of_one_second_are_appended_in_the_order_stripe_created_them(
    fake: FakeStripe, settings: Settings
) -> None:
    """Stripe lists newest first, also within one second (an invoice created, finalized
    and paid at once): the log must get them oldest first, as delivery would have."""
    by_object: dict[str, list[dict[str, Any]]] = {}
    for event in unique_events(stream(40, seed=7, thin_every=10**6)).values():
        if "account" not in event:
            by_object.setdefault(event["data"]["object"]["id"], []).append(event)
    lifecycle = next(group for group in by_object.values() if len(group) >= 3)
    second = lifecycle[0]["created"]
    fake.add_v1_events([{**event, "created": second} for event in lifecycle])
    await migrate_the_index(settings)
    async with client_for(fake) as client:
        report = await backfill(settings, client, BackfillOptions(since=SINCE))
    assert report.appended == len(lifecycle)
    on_log = await read_all(settings.kafka_bootstrap, settings.topic)
    assert [dict(r.headers)[HEADER_EVENT_ID].decode() for r in on_log] == [
        event["id"] for event in lifecycle
    ]


async def test_a_database_lost_mid_backfill_is_one_line_not_a_traceback(
    fake: FakeStripe, settings: Settings
) -> None:
    """The lock's release in `finally` used to raise on the closed connection, replacing
    the real error with an `InterfaceError` the command did not expect: a traceback."""
    fake.add_v1_events(list(unique_events(stream(10, seed=3, thin_every=10**6)).values()))
    url = settings.require_database_url()
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn, catalog.select(["events"]))
        fake.fail_next(1, status=None, delay=3.0)  # the listing waits: the backend goes
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "deploy.cli",
            "backfill",
            "--since",
            str(BASE_TIME),
            env={
                **os.environ,
                "LATTICE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
                "LATTICE_DATABASE_URL": url,
                "LATTICE_TOPIC": settings.topic,
                "LATTICE_STRIPE_API_KEY": fake.api_key,
                "LATTICE_STRIPE_API_BASE": fake.url,
            },
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        await eventually(lambda: asyncio.sleep(0, len(fake.seen)), lambda n: n == 1, what="list")
        terminated = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await conn.close()
    assert terminated == 1
    assert proc.returncode == 1, stderr.decode()
    last = stderr.decode().strip().splitlines()[-1]
    assert last.startswith("lattice: backfill stopped: "), last
    # Which server, and where it is set: the error's own text does not say.
    assert last.endswith(
        "; PostgreSQL: check that it answers (LATTICE_DATABASE_URL says where), "
        "then run the same command again"
    ), last
    assert b"Traceback" not in stderr


async def test_thin_events_missing_from_the_log_are_listed_and_appended(
    fake: FakeStripe, settings: Settings
) -> None:
    """A meter's error reports sent while the receiver was down longer than Stripe's three
    days of retries: `GET /v1/events` never lists them (they are v2 events), so the
    usage Stripe rejected was never counted. They come from `GET /v2/core/events`, the
    platform's and each connected account's (`Stripe-Context`), oldest first, with their
    bodies (the projector need not fetch them), once, and none older than --since."""
    reports = [
        meter_error_report(at=SINCE + timedelta(hours=n), identifiers=(f"usage-{n}",))[1]
        for n in range(1, 6)
    ]
    theirs = meter_error_report(at=SINCE + timedelta(hours=9), context=CONNECT)[1]
    # Older than --since: the listing (asked for no time range) ends at it.
    before = meter_error_report(at=SINCE - timedelta(seconds=1), identifiers=("usage-0",))[1]
    for full in [before, *reports, theirs]:
        fake.add_v2_event(full)
    await migrate_the_index(settings)
    options = BackfillOptions(since=SINCE, accounts=(CONNECT,), page_size=2)
    async with client_for(fake) as client:
        report = await backfill(settings, client, options)
        # The events projector has not indexed them (not run here): the ledger alone
        # keeps them from being appended twice.
        again = await backfill(settings, client, replace(options, allow_lag=True))

    assert (report.missing, report.appended) == (6, 6)
    assert (again.appended, again.earlier_backfill) == (0, 6)
    assert any(("page", "2") in seen.query for seen in fake.requests_to("/v2/core/events"))
    on_log = await read_all(settings.kafka_bootstrap, settings.topic)
    assert [orjson.loads(r.value or b"") for r in on_log] == [*reports, theirs]
    assert {r.key for r in on_log} == {reports[0]["related_object"]["id"].encode()}
    assert [r.headers.get(HEADER_ACCOUNT) for r in on_log] == [None] * 5 + [CONNECT.encode()]


async def test_backfill_waits_for_the_events_projector_to_index_the_log(
    fake: FakeStripe, settings: Settings
) -> None:
    """Records the index has not caught up with when backfill starts (a live system always
    has some): it waits for them instead of refusing. Run without --account, it names the
    connected account the log has events of, whose missing events it did not list."""
    delivered_all = stream(40, seed=23, thin_every=10**6)
    everything = unique_events(delivered_all)
    delivered = [e for i, e in enumerate(delivered_all) if not 10 <= i < 20]
    fake.add_v1_events(list(everything.values()))
    await migrate_the_index(settings)
    await produce(settings.kafka_bootstrap, settings.topic, records(delivered))
    missed = set(everything) - set(unique_events(delivered))
    platform_missed = {m for m in missed if "account" not in everything[m]}
    accounts = sorted({e["account"] for e in everything.values() if "account" in e})
    assert accounts
    assert platform_missed

    waits: list[int] = []
    async with client_for(fake) as client:
        running = asyncio.create_task(
            backfill(
                settings,
                client,
                BackfillOptions(since=SINCE, page_size=10),
                lambda state: waits.append(state.behind),
            )
        )
        await eventually(lambda: _value(waits), bool, what="backfill waiting for the index")
        assert not running.done()
        await project_until_caught_up(settings)
        done = await running

    assert waits[0] == len(delivered)
    assert (done.behind, done.appended) == (0, len(platform_missed))
    assert done.unlisted_accounts == accounts
    assert await _backfilled_ids(settings) == sorted(platform_missed)


async def _value(values: list[int]) -> list[int]:
    return values


async def test_thin_events_refused_to_the_key_leave_the_snapshot_events_appended(
    fake: FakeStripe, settings: Settings
) -> None:
    """A restricted key without access to v2 events: the v1 listing's missing events are
    appended all the same, and the refusal is reported (not a whole run lost)."""
    events = [
        e
        for e in unique_events(stream(20, seed=29, thin_every=10**6)).values()
        if "account" not in e
    ]
    fake.add_v1_events(events)
    fake.v2_listing_forbidden = True
    await migrate_the_index(settings)
    async with client_for(fake) as client:
        done = await backfill(settings, client, BackfillOptions(since=SINCE))
    assert done.appended == len(events)
    assert list(done.thin_refused) == ["platform"]
    assert "rak_event_read" in done.thin_refused["platform"]
    assert await _backfilled_ids(settings) == sorted(e["id"] for e in events)


async def test_an_event_over_the_body_limit_is_reported_and_the_rest_appended(
    fake: FakeStripe, settings: Settings
) -> None:
    """An event larger than the receiver takes (the one it answered 413, so the one most
    likely missing): reported by id and size, not appended, and the newer events behind
    it are (it used to stop every run at the same place)."""
    events = [
        e
        for e in unique_events(stream(12, seed=31, thin_every=10**6)).values()
        if "account" not in e
    ]
    sizes = sorted(len(orjson.dumps(e)) for e in events)
    limit = sizes[-1] - 1  # the largest is over it, by some bytes of headers at least
    large = [e["id"] for e in events if len(orjson.dumps(e)) > limit]
    assert large
    fake.add_v1_events(events)
    await migrate_the_index(settings)
    small = settings.model_copy(update={"max_body_bytes": limit})
    async with client_for(fake) as client:
        done = await backfill(small, client, BackfillOptions(since=SINCE))
    assert sorted(done.too_large) == sorted(large)
    assert all(size > limit for size in done.too_large.values())
    assert done.appended == len(events) - len(large)
    assert done.missing == done.appended
    assert await _backfilled_ids(settings) == sorted(
        e["id"] for e in events if e["id"] not in large
    )
