"""Projector throughput: N receiver-format records (realistic Stripe payloads, ~2-3 KB),
(a) the ceiling, a bare aiokafka `getmany` loop that parses every value, and (b) a
projection (`events` by default, any by `--projection NAME`) from offset 0 to the end
into PostgreSQL. Prints events/s, the ratio to the ceiling and peak RSS; each measured
phase runs in a child process so its memory is its own.

    python -m tests.benchmarks projectors                      # 1,000,000 records
    python -m tests.benchmarks projectors --records 100000 --projection subscriptions
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import resource
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from queue import Empty
from typing import Any

import asyncpg
import orjson
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from deploy.settings import Settings
from deploy.stack.topics import delete_topics, ensure_topics
from ingest.record import build_record
from projectors import catalog
from projectors.service import run_projections, tune_gc
from projectors.topic_partitions import partitions_of
from tests.support.stripe_stream import stream

TEMPLATES = 2000


def _bodies(count: int, seed: int) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """`count` distinct events: realistic templates, each copy with its own event id."""
    templates = stream(TEMPLATES, seed=seed, thin_every=97)
    for n in range(count):
        template = templates[n % TEMPLATES]
        old_id = template.event["id"]
        new_id = f"evt_{n:012d}{old_id[16:]}"[: len(old_id)]  # same length: cheap replace
        yield (
            template.body.replace(old_id.encode(), new_id.encode(), 1),
            {
                **template.event,
                "id": new_id,
            },
        )


async def produce(bootstrap: str, topic: str, count: int, seed: int) -> tuple[float, int]:
    """Append `count` records; returns (seconds, average value size)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks=1,
        linger_ms=20,
        max_batch_size=1024 * 1024,
        compression_type="lz4",
        max_request_size=8 * 1024 * 1024,
    )
    await producer.start()
    started, size = time.monotonic(), 0
    received = datetime.now(UTC)
    try:
        pending = []
        for body, event in _bodies(count, seed):
            record = build_record(body, event, endpoint="platform", received_at=received)
            size += len(body)
            pending.append(
                await producer.send(
                    topic, value=record.value, key=record.key, headers=record.headers
                )
            )
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.monotonic() - started, size // max(1, count)


class RssSampler:
    """Samples this process's RSS every 0.2 s; keeps the peak and a few points."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.samples: list[int] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.samples.append(self.process.memory_info().rss)
            await asyncio.sleep(0.2)

    def __enter__(self) -> RssSampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.samples.append(self.process.memory_info().rss)

    def report(self) -> dict[str, Any]:
        """Peak and RSS at each quarter of the run, in MiB."""
        s = self.samples or [0]
        quarters = [s[min(len(s) - 1, len(s) * q // 4)] // 2**20 for q in (1, 2, 3, 4)]
        peak = max(max(s), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        return {"peak_mib": peak // 2**20, "quarters_mib": quarters}


async def _ceiling(bootstrap: str, topic: str, batch: int) -> dict[str, Any]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 2**20,
        fetch_max_bytes=64 * 2**20,
    )
    await consumer.start()
    try:
        tps = await partitions_of(consumer, [topic])
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        done = 0
        with RssSampler() as rss:
            started = time.monotonic()
            # Until every partition's position reaches its end (offsets, not a count: an
            # offset may hold no record, e.g. a transaction marker).
            behind = [tp for tp in tps if ends[tp] > 0]
            while behind:
                fetched = await consumer.getmany(*behind, timeout_ms=1000, max_records=batch)
                for msgs in fetched.values():
                    for msg in msgs:
                        orjson.loads(msg.value)
                    done += len(msgs)
                behind = [tp for tp in behind if await consumer.position(tp) < ends[tp]]
            seconds = time.monotonic() - started
        return {"events": done, "seconds": seconds, **rss.report()}
    finally:
        await consumer.stop()


async def _projection(settings: Settings, name: str) -> dict[str, Any]:
    projection = catalog.select([name])[0]
    url = settings.require_database_url()
    ends_total = await _log_size(settings.kafka_bootstrap, settings.topic)
    stop = asyncio.Event()
    with RssSampler() as rss:
        started = time.monotonic()
        task = asyncio.create_task(
            run_projections(settings, [projection], stop=stop, handle_signals=False)
        )
        conn = await asyncpg.connect(url)
        first: tuple[float, int] | None = None
        try:
            while True:
                if task.done():
                    task.result()
                    raise RuntimeError("the projector stopped before the end of the log")
                try:
                    applied = await conn.fetchval(
                        "SELECT coalesce(sum(next_offset), 0) FROM lattice.offsets "
                        "WHERE projector = $1 AND topic = $2",
                        name,
                        settings.topic,
                    )
                except asyncpg.UndefinedTableError:
                    applied = 0
                if applied and first is None:
                    first = (time.monotonic(), int(applied))
                if applied >= ends_total:
                    break
                await asyncio.sleep(0.1)
            # A dead letter moves the position too, without a row: the rate must not count it.
            dead = await conn.fetchval(
                "SELECT count(*) FROM lattice.dead_letters WHERE projector = $1", name
            )
        finally:
            await conn.close()
        seconds = time.monotonic() - started
        stop.set()
        await task
    assert first is not None
    # Startup (migrations, joining the group) is in `seconds`; `steady` leaves it out.
    steady = (ends_total - first[1]) / max(1e-9, started + seconds - first[0])
    return {
        "events": ends_total,
        "dead_letters": int(dead),
        "seconds": seconds,
        "steady": steady,
        "startup": first[0] - started,
        **rss.report(),
    }


async def _log_size(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await partitions_of(consumer, [topic])
        return int(sum((await consumer.end_offsets(tps)).values()))
    finally:
        await consumer.stop()


def _child(kind: str, settings_json: str, name: str, queue: Any) -> None:
    settings = Settings.model_validate_json(settings_json)
    if kind == "ceiling":
        result = asyncio.run(
            _ceiling(settings.kafka_bootstrap, settings.topic, settings.projector_batch_size)
        )
    else:
        tune_gc()  # as `lattice project` does
        result = asyncio.run(_projection(settings, name))
    queue.put(result)


def _in_child(kind: str, settings: Settings, name: str = "") -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_child, args=(kind, settings.model_dump_json(), name, queue))
    child.start()
    while True:
        try:
            result: dict[str, Any] = queue.get(timeout=5)
            break
        except Empty:
            if not child.is_alive() and queue.empty():  # died without answering: no wait for ever
                raise SystemExit(f"bench: the {kind} phase died (exit {child.exitcode})") from None
    child.join()
    return result


async def _setup(settings: Settings, args: argparse.Namespace) -> tuple[float, int]:
    await ensure_topics(
        settings.kafka_bootstrap,
        [settings.topic, settings.dlq_topic, settings.usage_topic],
        partitions=args.partitions,
    )
    admin = await asyncpg.connect(args.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{args.database}"')
    finally:
        await admin.close()
    return await produce(settings.kafka_bootstrap, settings.topic, args.records, args.seed)


async def _teardown(settings: Settings, args: argparse.Namespace) -> None:
    await delete_topics(
        settings.kafka_bootstrap, [settings.topic, settings.dlq_topic, settings.usage_topic]
    )
    admin = await asyncpg.connect(args.database_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
    finally:
        await admin.close()


def main(argv: list[str]) -> int:
    """Run the benchmark; print a table of figures."""
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks projectors")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--projection", default="events", help="a projection's name")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=random.randrange(1 << 20))
    args = parser.parse_args(argv)
    base = os.environ.get("LATTICE_DATABASE_URL")
    if not base:
        raise SystemExit(
            "LATTICE_DATABASE_URL is not set: run `make bench` or source .lattice/stack.env"
        )
    run = f"bench{uuid.uuid4().hex[:8]}"
    args.database_url, args.database = base, run
    settings = Settings(
        kafka_bootstrap=os.environ.get("LATTICE_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        database_url=base.rsplit("/", 1)[0] + f"/{run}",
        topic=f"{run}.stripe.events",
        usage_topic=f"{run}.usage.reported",
        projector_batch_size=args.batch_size,
        group_prefix=run,
    )
    try:
        produce_s, size = asyncio.run(_setup(settings, args))
        print(f"produced {args.records:,} records (avg value {size:,} B, lz4) in {produce_s:.1f} s")
        ceiling = _in_child("ceiling", settings)
        projected = _in_child("projection", settings, args.projection)
    finally:
        asyncio.run(_teardown(settings, args))
    for label, phase in (("ceiling", ceiling), ("projection", projected)):
        if phase["events"] <= 0 or phase["seconds"] <= 0:
            raise SystemExit(f"bench: the {label} phase read no records; see its output above")
    if projected["dead_letters"]:
        raise SystemExit(
            f"bench: {projected['dead_letters']:,} records were dead-lettered, not projected: "
            "the rate would count them"
        )
    c_rate = ceiling["events"] / ceiling["seconds"]
    p_rate = projected["events"] / projected["seconds"]
    print(
        f"{'phase':<26} {'events':>10} {'seconds':>8} {'events/s':>10} {'ratio':>6} "
        f"{'peak RSS':>9}  RSS at 25/50/75/100%"
    )
    for label, r, rate in (
        ("ceiling (getmany+parse)", ceiling, c_rate),
        (f"projector {args.projection}", projected, p_rate),
    ):
        print(
            f"{label:<26} {r['events']:>10,} {r['seconds']:>8.1f} {rate:>10,.0f} "
            f"{rate / c_rate:>6.0%} {r['peak_mib']:>6} MiB  "
            f"{'/'.join(str(q) for q in r['quarters_mib'])} MiB"
        )
    print(
        f"projector startup (migrate, join group, first commit) {projected['startup']:.1f} s; "
        f"steady state {projected['steady']:,.0f} events/s ({projected['steady'] / c_rate:.0%})"
    )
    return 0
