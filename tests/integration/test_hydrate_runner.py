"""The hydrator under the real runner: Stripe failing makes the projector wait (the
circuit opens, then lets a trial through) without skipping anything, and an event Stripe
does not know goes to the dead-letter topic with the reason, asked for once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest
from pydantic import SecretStr

from deploy.settings import Settings
from ingest.record import build_record
from projectors.base import Record
from projectors.migrate import ensure_runtime
from projectors.service import run_projections
from projectors.stripe_api.breaker import CircuitBreaker
from projectors.stripe_api.client import StripeClient
from projectors.stripe_api.hydrate import Hydrator
from projectors.stripe_api.retry import RetryPolicy
from tests.conftest import Topics
from tests.support.fake_stripe import FakeStripe, serve
from tests.support.kafka import read_all
from tests.support.stripe_stream import produce
from tests.support.thin_events import T0, meter_error_report
from tests.support.wait import eventually

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class ErrorCounts:
    """A projection of thin meter error reports: event id -> error count."""

    sql_dir: Path
    name: str = "thin_probe"
    hydrate_thin_events: bool = True

    def topics(self, settings: Settings) -> Sequence[str]:
        return [settings.topic]

    def reduce(self, record: Record) -> Sequence[tuple[str, int]]:
        event = record.json()
        return [(str(event["id"]), int(event["data"]["reason"]["error_count"]))]

    async def apply(self, conn: asyncpg.Connection, changes: Sequence[tuple[str, int]]) -> None:
        await conn.executemany(
            "INSERT INTO thin_probe (id, error_count) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            changes,
        )


async def _no_wait(_: float) -> None:
    return None


async def test_stripe_down_waits_and_unknown_events_are_dead_lettered(
    settings: Settings, topics: Topics, database_url: str, tmp_path: Path
) -> None:
    (tmp_path / "0001_thin_probe.sql").write_text(
        "CREATE TABLE thin_probe (id text PRIMARY KEY, error_count integer NOT NULL);"
    )
    projection = ErrorCounts(sql_dir=tmp_path)
    first, unknown, last = (
        meter_error_report(identifiers=("u-1", "u-2", "u-3")),
        meter_error_report(identifiers=("u-4",)),
        meter_error_report(identifiers=("u-5", "u-6")),
    )
    conn = await asyncpg.connect(database_url)
    await ensure_runtime(conn)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        async with serve(FakeStripe()) as fake:
            fake.add_v2_event(first[1])
            fake.add_v2_event(last[1])  # `unknown` is not on Stripe: 404
            # Two failures open the circuit; its first half-open trial fails too.
            fake.fail_next(3, status=503)
            # One meter: one key, one partition, so the three stay in order.
            logged = [
                build_record(orjson.dumps(thin), thin, endpoint="platform", received_at=T0)
                for thin, _ in (first, unknown, last)
            ]
            await produce(settings.kafka_bootstrap, topics.events, logged)
            client = StripeClient(
                api_key=SecretStr(fake.api_key),
                base_url=fake.url,
                api_version="2025-10-29.clover",
                retry=RetryPolicy(max_retries=3),
                breaker=CircuitBreaker(threshold=2, cooldown=0.3),
                timeout=httpx.Timeout(5.0),
                sleep=_no_wait,
            )
            stop = asyncio.Event()
            async with client:
                runner = asyncio.create_task(
                    run_projections(
                        settings,
                        [projection],
                        hydrate=Hydrator(pool, client),
                        stop=stop,
                        handle_signals=False,
                    )
                )

                async def rows() -> dict[str, int]:
                    if runner.done():
                        runner.result()
                    if await conn.fetchval("SELECT to_regclass('projections.thin_probe')"):
                        found = await conn.fetch("SELECT * FROM projections.thin_probe")
                        return {r["id"]: r["error_count"] for r in found}
                    return {}

                try:
                    got = await eventually(
                        rows,
                        lambda r: len(r) == 2,
                        timeout=60,
                        what="both known reports applied",
                    )
                finally:
                    stop.set()
                    await runner
            assert got == {first[0]["id"]: 3, last[0]["id"]: 2}
            # 2 failures opened the circuit (the 3rd attempt was refused), the runner
            # waited, the half-open trial failed, it waited again, the next trial worked.
            assert len(fake.requests_to(f"/v2/core/events/{first[0]['id']}")) == 4
            dead = await read_all(settings.kafka_bootstrap, topics.dlq)
            assert [orjson.loads(d.value or b"{}")["id"] for d in dead] == [unknown[0]["id"]]
            assert b"HTTP 404: No such event" in dead[0].headers["lattice-error"]
            # A verdict is not tried again: Stripe was asked once, not LATTICE_POISON_RETRIES
            # times (its rate limit is the account's).
            assert settings.poison_retries > 1
            assert len(fake.requests_to(f"/v2/core/events/{unknown[0]['id']}")) == 1
            cached = await conn.fetchval("SELECT count(*) FROM lattice.hydrated_events")
            assert cached == 2
    finally:
        await pool.close()
        await conn.close()
