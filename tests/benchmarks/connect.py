"""Connect projector throughput: a realistic Connect mix (destination, separate and direct
charges, transfers and reversals, application fees and refunds, account updates, payouts)
through the real runner into PostgreSQL, against the ceiling of a bare aiokafka
`getmany` loop that parses every value, measured in the same run.

    python -m tests.benchmarks connect                    # ~200,000 records
    python -m tests.benchmarks connect --orders 20000     # ~53,000 records
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from datetime import UTC, datetime

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from deploy.settings import Settings
from deploy.stack.topics import delete_topics, ensure_topics
from ingest.record import build_record
from projectors.connect import projection
from projectors.service import run_projections
from projectors.topic_partitions import partitions_of
from tests.fixtures.connect_streams import volume


async def produce(settings: Settings, orders: int, seed: int) -> int:
    """Append the Connect mix in the receiver's record format; returns the record count."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks=1,
        linger_ms=20,
        max_batch_size=1024 * 1024,
        compression_type="lz4",
    )
    await producer.start()
    received, count = datetime.now(UTC), 0
    try:
        pending = []
        for event in volume(orders=orders, accounts=max(10, orders // 50), seed=seed):
            endpoint = "connect" if "account" in event else "platform"
            record = build_record(
                orjson.dumps(event), event, endpoint=endpoint, received_at=received
            )
            pending.append(
                await producer.send(
                    settings.topic, value=record.value, key=record.key, headers=record.headers
                )
            )
            count += 1
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return count


async def ceiling(settings: Settings, total: int) -> float:
    """Seconds for a bare consumer to fetch and parse the whole topic."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        fetch_max_bytes=64 * 2**20,
    )
    await consumer.start()
    try:
        tps = await partitions_of(consumer, [settings.topic])
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        started, done = time.monotonic(), 0
        while done < total:
            fetched = await consumer.getmany(
                timeout_ms=10_000, max_records=settings.projector_batch_size
            )
            if not fetched:
                raise RuntimeError(f"the topic stopped after {done} of {total} records")
            for msgs in fetched.values():
                for msg in msgs:
                    orjson.loads(msg.value)
                done += len(msgs)
        return time.monotonic() - started
    finally:
        await consumer.stop()


async def project(settings: Settings, total: int, timeout: float = 1800) -> float:
    """Seconds for the connect projector to apply the whole topic, from its first poll."""
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_projections(settings, [projection], stop=stop, handle_signals=False)
    )
    conn = await asyncpg.connect(settings.require_database_url())
    started = time.monotonic()
    try:
        while True:
            if task.done():
                task.result()
                raise RuntimeError("the projector stopped before the end of the log")
            try:
                applied = await conn.fetchval(
                    "SELECT coalesce(sum(next_offset), 0) FROM lattice.offsets "
                    "WHERE projector = 'connect'"
                )
            except asyncpg.UndefinedTableError:
                applied = 0
            if applied >= total:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"the projector applied {applied} of {total} in {timeout} s")
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
        stop.set()
        await task


async def run(args: argparse.Namespace, base_url: str) -> None:
    """Set up a private topic and database, measure, tear down."""
    name = f"bench{uuid.uuid4().hex[:8]}"
    settings = Settings(
        kafka_bootstrap=os.environ.get("LATTICE_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        database_url=base_url.rsplit("/", 1)[0] + f"/{name}",
        topic=f"{name}.stripe.events",
        projector_batch_size=args.batch_size,
        group_prefix=name,
    )
    await ensure_topics(
        settings.kafka_bootstrap, [settings.topic, settings.dlq_topic], partitions=args.partitions
    )
    admin = await asyncpg.connect(base_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        total = await produce(settings, args.orders, args.seed)
        bare = await ceiling(settings, total)
        projected = await project(settings, total)
        check = await asyncpg.connect(settings.require_database_url())
        try:
            entries = await check.fetchval("SELECT count(*) FROM projections.connect_ledger")
        finally:
            await check.close()
        print(f"{total:,} records, {entries:,} ledger entries, batch {args.batch_size}")
        for label, seconds in (("ceiling (getmany+parse)", bare), ("projector connect", projected)):
            print(
                f"{label:<26} {seconds:>7.1f} s {total / seconds:>10,.0f} events/s "
                f"{bare / seconds:>5.0%} of ceiling"
            )
    finally:
        await delete_topics(settings.kafka_bootstrap, [settings.topic, settings.dlq_topic])
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main(argv: list[str]) -> int:
    """Run the benchmark; print its figures."""
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks connect")
    parser.add_argument("--orders", type=int, default=75_000, help="~2.65 records each")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    base = os.environ.get("LATTICE_DATABASE_URL")
    if not base:
        raise SystemExit(
            "LATTICE_DATABASE_URL is not set: run `make bench` or source .lattice/stack.env"
        )
    asyncio.run(run(args, base))
    return 0
