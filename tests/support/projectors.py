"""Helpers for projector tests: run projections in-process or as a child process, read
positions and tables back, make extra databases."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from aiokafka import AIOKafkaConsumer

from deploy.settings import Settings
from projectors.service import run_projections
from projectors.topic_partitions import partitions_of

ROOT = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def running(
    settings: Settings, projections: Sequence[Any], **kwargs: Any
) -> AsyncIterator[asyncio.Event]:
    """Run projections in this process for the body of the `async with`; stop them after."""
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_projections(settings, projections, stop=stop, handle_signals=False, **kwargs)
    )
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


def as_user(url: str, user: str, password: str | None = None) -> str:
    """`url` logging in as `user` (with `password`, if given) instead."""
    parts = urlsplit(url)
    login = user if password is None else f"{user}:{password}"
    return urlunsplit(parts._replace(netloc=f"{login}@{parts.hostname}:{parts.port}"))


@asynccontextmanager
async def extra_database(admin_url: str, name: str) -> AsyncIterator[str]:
    """Another fresh database on the same server (dropped afterwards)."""
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    finally:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def log_ends(bootstrap: str, topic: str) -> dict[int, int]:
    """The end offset of each partition of a topic."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await partitions_of(consumer, [topic], missing_ok=True)
        ends = await consumer.end_offsets(tps)
        return {tp.partition: int(offset) for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def positions(url: str, projector: str) -> dict[int, int]:
    """The stored next offset per partition of a projector (none yet: empty)."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT partition, next_offset FROM lattice.offsets WHERE projector = $1", projector
        )
    except asyncpg.UndefinedTableError:
        return {}
    finally:
        await conn.close()
    return {r["partition"]: int(r["next_offset"]) for r in rows}


async def rows(url: str, query: str) -> list[tuple[Any, ...]]:
    """The rows of a query, as tuples."""
    conn = await asyncpg.connect(url)
    try:
        return [tuple(r) for r in await conn.fetch(query)]
    finally:
        await conn.close()


EVENTS_TABLE = "SELECT * FROM projections.events ORDER BY id"


def spawn(settings: Settings, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """Start the test projector process (events + audit) with these settings."""
    variables = {
        **os.environ,
        "LATTICE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "LATTICE_DATABASE_URL": settings.require_database_url(),
        "LATTICE_TOPIC": settings.topic,
        **env,
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.support.projector_process"],
            cwd=ROOT,
            env=variables,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
