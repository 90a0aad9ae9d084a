"""A simulated month through the real receiver and every projector ends in the tables the
simulator expects (real Kafka, real PostgreSQL, HTTP deliveries signed like Stripe's)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest
import uvicorn
from pydantic import SecretStr

from deploy.settings import Settings
from ingest.app import create_app
from ingest.simulate import fake_stripe
from ingest.simulate.deliver import deliver, produce_facts
from ingest.simulate.generator import generate
from ingest.simulate.report import (
    differences,
    read_tables,
    receiver_outcomes,
    wait_caught_up,
)
from ingest.simulate.shapes import MIXED, NEW_API
from projectors import catalog
from projectors.service import run_projections
from projectors.stripe_api.hydrate import open_hydrator
from tests.support.ports import free_port
from tests.support.wait import eventually

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRETS = {"platform": ["whsec_e2e_platform"], "connect": ["whsec_e2e_connect"]}


@contextlib.asynccontextmanager
async def receiver(settings: Settings) -> AsyncIterator[str]:
    """The real receiver app on a free loopback port."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    await eventually(lambda: asyncio.sleep(0, server.started), what="receiver started")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def projectors(settings: Settings) -> AsyncIterator[None]:
    """Every projector, in this process, until the block ends."""
    stop = asyncio.Event()

    async def run() -> None:
        async with open_hydrator(settings) as hydrate:
            await run_projections(
                settings, catalog.select([]), hydrate=hydrate, stop=stop, handle_signals=False
            )

    task = asyncio.create_task(run())
    try:
        yield
    finally:
        stop.set()
        await task


@pytest.mark.parametrize(
    ("api_version", "seed"),
    # Each seed has thin error reports, discrepancies and usage credited back. The mixed
    # month's plan changes all come before its upgrade: basil's proration lines only in
    # a month of the new version alone.
    [(MIXED, 8), (NEW_API, 25)],
)
async def test_tables_equal_the_simulators_expected_totals(
    settings: Settings, api_version: str, seed: int
) -> None:
    simulation = generate(20, 3, seed=seed, api_version=api_version)
    expected = simulation.expected
    assert simulation.hydrated
    reports = [orjson.loads(body)["data"]["reason"] for body in simulation.hydrated.values()]
    assert any(r["error_count"] > len(r["error_types"][0]["sample_errors"]) for r in reports)
    assert expected.discrepancies
    assert expected.credited
    assert {"active", "past_due", "canceled", "trialing"} <= set(expected.subscriptions)
    stripe_port = free_port()
    settings = settings.model_copy(
        update={
            "webhook_secrets": SecretStr(",".join(f"{e}={s[0]}" for e, s in SECRETS.items())),
            "stripe_api_key": SecretStr("sk_test_e2e"),
            "stripe_api_base": f"http://127.0.0.1:{stripe_port}",
        }
    )
    async with (
        fake_stripe.serving(simulation.hydrated, port=stripe_port),
        receiver(settings) as url,
        projectors(settings),
    ):
        # Usage while the webhooks are delivered, as an app reports it (most facts reach
        # the projection before their period's invoice; `make demo` sends them after).
        outcome, _ = await asyncio.gather(
            deliver(simulation.deliveries, url=url, secrets=SECRETS),
            produce_facts(
                simulation.facts, bootstrap=settings.kafka_bootstrap, topic=settings.usage_topic
            ),
        )
        assert outcome.accepted == expected.accepted
        assert outcome.rejected == expected.rejected
        counted = await receiver_outcomes(url)
        assert counted.pop("accepted") == expected.accepted
        # A delivery broken off mid-body counts as client_disconnected when the receiver
        # saw its headers, and not at all when the cut came before them.
        assert counted.pop("client_disconnected", 0) <= outcome.broken_off
        assert sum(counted.values()) == expected.rejected
        lag, dead = await wait_caught_up(settings, timeout=60)
        assert (lag, dead) == (0, 0)

        async def wrong() -> list[str]:
            return differences(expected, await read_tables(settings.require_database_url()))

        # On failure: what differs (a few rows per table), not every row read.
        await eventually(
            wrong,
            lambda found: not found,
            timeout=30,
            what="tables equal the simulation's expected totals and rows",
        )
        # A report that counted an error its samples do not name flags the rows of its
        # meter's period: the rejection no projection can tie to its customer.
        conn = await asyncpg.connect(settings.require_database_url())
        try:
            flagged = await conn.fetchval(
                "SELECT count(*) FROM projections.meter_reconciliation "
                "WHERE unattributed_rejections > 0"
            )
        finally:
            await conn.close()
        assert flagged > 0
        # And against what happened, not the rules the expected totals restate: a billed
        # period's delta is its usage reported late, less what the app never logged, plus
        # rejections no sample names (which the projection cannot tell apart from
        # unbilled usage, and flags), plus units credited back.
        conn = await asyncpg.connect(settings.require_database_url())
        try:
            judged = await conn.fetch(
                "SELECT customer, meter, extract(epoch FROM period_start)::bigint AS start, "
                "delta, status FROM projections.meter_reconciliation "
                "WHERE status NOT IN ('pending', 'incomplete')"
            )
        finally:
            await conn.close()
        assert {(r["customer"], r["meter"], r["start"]) for r in judged} == set(simulation.truth)
        for row in judged:
            what = simulation.truth[(row["customer"], row["meter"], row["start"])]
            happened = what.late - what.lost + what.unsampled + what.credited
            assert row["delta"] == happened, (dict(row), what)
            if what.late > what.lost and not what.unsampled:
                assert row["status"] == "under_billed", (dict(row), what)
