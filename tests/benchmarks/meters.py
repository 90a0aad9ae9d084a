"""Benchmark of the meters projection: 1 M usage facts through the real runner.

Puts a month of Stripe events (one sum meter, N customers' subscriptions) and `facts`
usage facts on fresh topics, then measures (a) the ceiling: a bare consumer reading the
same records with `getmany`, and (b) `run_projections` with the meters projection until
every position is stored in PostgreSQL. Reports facts/s and the ratio to the ceiling;
the target is >= 20,000 facts/s. A fresh database and fresh topics, removed afterwards.

    . .lattice/stack.env && .venv/bin/python -m tests.benchmarks meters [--facts N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from deploy.settings import Settings
from deploy.stack.topics import delete_topics, ensure_topics
from ingest.record import build_record
from projectors.meters import projection
from projectors.migrate import migrate
from projectors.service import run_projections
from tests.fixtures.stripe_objects import MONTH, T0, event, price, subscription, subscription_item
from tests.support.meter_payloads import RECEIVED_AT, billing_meter, meter_event

TARGET_FACTS_PER_S = 20_000
APPLIED = "SELECT coalesce(sum(next_offset), 0)::bigint FROM lattice.offsets WHERE projector = $1"
PARTITIONS = 6


@dataclass(frozen=True)
class Result:
    """What one run measured."""

    facts: int
    records: int
    ceiling_per_s: float
    facts_per_s: float
    seconds: float
    startup_seconds: float
    steady_per_s: float

    def report(self) -> str:
        """One line per figure, for a terminal or a CI log."""
        ratio = self.facts_per_s / self.ceiling_per_s if self.ceiling_per_s else 0.0
        verdict = "meets" if self.facts_per_s >= TARGET_FACTS_PER_S else "misses"
        return (
            f"meters: {self.facts:,} usage facts ({self.records:,} records) in "
            f"{self.seconds:.1f} s = {self.facts_per_s:,.0f} facts/s (steady state "
            f"{self.steady_per_s:,.0f} records/s after {self.startup_seconds:.1f} s of startup); "
            f"ceiling (getmany + parse) {self.ceiling_per_s:,.0f} records/s; ratio "
            f"{ratio:.2f}; {verdict} the target of {TARGET_FACTS_PER_S:,} facts/s"
        )


def stripe_events(customers: int) -> tuple[list[tuple[bytes, bytes, list[Any]]], str]:
    """A sum meter and one basil subscription per customer, as log records."""
    meter = billing_meter(event_name="bench_api_requests", formula="sum")
    metered = price(meter=meter["id"], unit_amount=None)
    events = [meter_event(meter)]
    for n in range(customers):
        item = subscription_item(item_price=metered)
        sub = subscription(customer=f"cus_bench{n}", items=[item])
        events.append(event("customer.subscription.created", sub))
    out = []
    for evt in events:
        log = build_record(orjson.dumps(evt), evt, endpoint="platform", received_at=RECEIVED_AT)
        out.append((log.key, log.value, log.headers))
    return out, str(meter["event_name"])


def usage_facts(count: int, customers: int, event_name: str) -> list[tuple[bytes, bytes]]:
    """`count` facts spread over the customers and the month, values with decimals."""
    rng = random.Random(7)
    out = []
    for n in range(count):
        customer = f"cus_bench{rng.randrange(customers)}"
        fact = {
            "identifier": f"bench-{n}",
            "event_name": event_name,
            "stripe_customer_id": customer,
            "value": f"{rng.randrange(1, 1000) / 10:.1f}",
            "timestamp": T0 + rng.randrange(MONTH),
        }
        out.append((customer.encode(), orjson.dumps(fact)))
    return out


async def produce(bootstrap: str, topic: str, records: list[tuple[Any, ...]]) -> None:
    """Append records fast (batched, unacknowledged sends awaited at the end)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    try:
        pending = []
        for record in records:
            key, value, *rest = record
            headers = rest[0] if rest else []
            pending.append(await producer.send(topic, value=value, key=key, headers=headers))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def ceiling(bootstrap: str, topics: list[str], total: int) -> float:
    """Records/s of a bare consumer reading and parsing every record with getmany."""
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=f"bench-ceiling-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    try:
        seen = 0
        started = time.perf_counter()
        while seen < total:
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            for msgs in batch.values():
                for msg in msgs:
                    orjson.loads(msg.value or b"null")  # the projection parses each one too
                seen += len(msgs)
        return seen / (time.perf_counter() - started)
    finally:
        await consumer.stop()


async def run(bootstrap: str, admin_url: str, *, facts: int, customers: int) -> Result:
    """Set up, measure the ceiling and the projection, clean up; the figures."""
    name = f"bench{uuid.uuid4().hex[:8]}"
    events_topic, usage_topic = f"{name}.stripe.events", f"{name}.usage.reported"
    topics = [events_topic, f"{events_topic}.dlq", usage_topic]
    await ensure_topics(bootstrap, topics, partitions=PARTITIONS)
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    database_url = urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    try:
        stripe, event_name = stripe_events(customers)
        await produce(bootstrap, events_topic, stripe)
        await produce(bootstrap, usage_topic, usage_facts(facts, customers, event_name))
        total = len(stripe) + facts
        top = await ceiling(bootstrap, [events_topic, usage_topic], total)
        settings = Settings(
            kafka_bootstrap=bootstrap,
            database_url=database_url,
            topic=events_topic,
            usage_topic=usage_topic,
            group_prefix=name,
        )
        seconds, startup, steady = await project_all(settings, database_url, total)
        return Result(facts, total, top, facts / seconds, seconds, startup, steady)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        await delete_topics(bootstrap, topics)


async def project_all(
    settings: Settings, database_url: str, total: int
) -> tuple[float, float, float]:
    """Seconds from starting the runner until every record's position is stored; seconds
    until the first batch was stored (group join, startup); records/s after that."""
    conn = await asyncpg.connect(database_url)
    await migrate(conn, [projection])  # outside the timing; the runner finds nothing to do
    stop = asyncio.Event()
    started = time.perf_counter()
    first: tuple[float, int] | None = None
    task = asyncio.create_task(
        run_projections(settings, [projection], stop=stop, handle_signals=False)
    )
    try:
        while True:
            if task.done():
                task.result()
                raise RuntimeError("the projection stopped before consuming everything")
            applied = await conn.fetchval(APPLIED, projection.name)
            now = time.perf_counter()
            if applied and first is None:
                first = (now, applied)
            if applied >= total:
                assert first is not None
                steady = (total - first[1]) / (now - first[0]) if now > first[0] else 0.0
                return now - started, first[0] - started, steady
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await task
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    """`python -m tests.benchmarks meters [--facts N] [--customers N]`: print the figures."""
    parser = argparse.ArgumentParser(prog="meters", description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=10_000)
    args = parser.parse_args(argv)
    bootstrap = os.environ.get("LATTICE_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    admin_url = os.environ.get("LATTICE_DATABASE_URL")
    if not admin_url:
        print("LATTICE_DATABASE_URL is not set: run `. .lattice/stack.env` first")
        return 2
    result = asyncio.run(run(bootstrap, admin_url, facts=args.facts, customers=args.customers))
    print(result.report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
