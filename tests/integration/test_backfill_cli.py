"""`lattice backfill` as an operator runs it: a Stripe outage fails the run with one line
and appends nothing; the same command run again appends what was missing and says so."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from deploy.settings import Settings
from ingest.record import HEADER_EVENT_ID
from projectors import catalog
from projectors.migrate import migrate
from tests.support.fake_stripe import FakeStripe, serve
from tests.support.kafka import read_all
from tests.support.stripe_stream import BASE_TIME, stream

pytestmark = pytest.mark.integration
LATTICE = Path(sys.executable).with_name("lattice")


@pytest.fixture
async def fake() -> AsyncIterator[FakeStripe]:
    async with serve(FakeStripe(api_key="sk_test_51CliKeyNeverPrinted")) as running:
        yield running


async def lattice(settings: Settings, fake: FakeStripe, *args: str) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "LATTICE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "LATTICE_DATABASE_URL": settings.require_database_url(),
        "LATTICE_TOPIC": settings.topic,
        "LATTICE_STRIPE_API_BASE": fake.url,
        "LATTICE_STRIPE_API_KEY": fake.api_key,
    }
    process = await asyncio.create_subprocess_exec(
        str(LATTICE),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_backfill_command_survives_an_outage_and_reports_what_was_missing(
    fake: FakeStripe, settings: Settings
) -> None:
    events = [e.event for e in stream(25, seed=23, thin_every=10**6) if "account" not in e.event]
    unique = {e["id"]: e for e in events}
    fake.add_v1_events(list(unique.values()))
    conn = await asyncpg.connect(settings.require_database_url())
    try:
        await migrate(conn, catalog.select(["events"]))
    finally:
        await conn.close()

    fake.fail_next(1, status=503, headers={"Stripe-Should-Retry": "false"})
    code, out, err = await lattice(settings, fake, "backfill", "--since", str(BASE_TIME))
    assert code == 1
    assert "lattice: Stripe API: GET /v1/events: HTTP 503" in err
    assert "run the same command again" in err
    assert await read_all(settings.kafka_bootstrap, settings.topic) == []

    code, out, err = await lattice(settings, fake, "backfill", "--since", str(BASE_TIME))
    assert code == 0, err
    assert out.startswith(f"{len(unique)} events missing from the log (appended {len(unique)})")
    assert f"backfill: {len(unique)} listed in 1 page " in err
    # stderr is a pipe here: the final progress line is not printed a second time.
    finals = [line for line in err.splitlines() if line.startswith("backfill: ")]
    assert len(finals) == len(set(finals)), err
    assert fake.api_key not in out + err
    log = await read_all(settings.kafka_bootstrap, settings.topic)
    assert sorted(r.headers[HEADER_EVENT_ID].decode() for r in log) == sorted(unique)

    # A key without access to v2 events: the snapshot events were listed, exit 1 says why.
    # (--allow-lag: no events projector runs here to index what the run before appended.)
    fake.v2_listing_forbidden = True
    code, out, err = await lattice(
        settings, fake, "backfill", "--since", str(BASE_TIME), "--allow-lag"
    )
    assert code == 1
    assert out.startswith("0 events missing from the log")
    assert (
        "lattice: the thin events of platform (GET /v2/core/events) were not listed: "
        "GET /v2/core/events: HTTP 403"
    ) in err

    code, out, err = await lattice(settings, fake, "backfill", "--since", "not-a-time")
    assert code == 2
    assert "--since" in err
    assert "neither RFC 3339" in err
    code, out, err = await lattice(
        settings, fake, "backfill", "--since", str(BASE_TIME), "--wait-for-index", "-1"
    )
    assert code == 2
    assert "--wait-for-index: must be zero or more seconds" in err


async def test_backfill_with_a_key_stripe_refuses_says_so_and_not_to_retry(
    settings: Settings,
) -> None:
    conn = await asyncpg.connect(settings.require_database_url())
    try:
        await migrate(conn, catalog.select(["events"]))
    finally:
        await conn.close()
    refusing = FakeStripe(api_key="sk_test_51SomeOtherKeyEntirely")
    async with serve(refusing) as other:
        code, _out, err = await lattice(
            settings, other, "backfill", "--since", str(BASE_TIME), "--stripe-api-key", "sk_bad"
        )
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("lattice: Stripe refused LATTICE_STRIPE_API_KEY")
    assert "retrying will not help" in err
    assert "run the same command again" not in err
    assert "sk_bad" not in err
