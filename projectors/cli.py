"""`lattice project | migrate | replay | status | rewind`: the projector runtime's commands."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import asyncpg

from deploy.logs import configure_logging
from deploy.settings import ConfigError, Settings, load_settings
from projectors import catalog
from projectors.migrate import MigrationError, migrate
from projectors.service import run_projections
from projectors.stripe_api.hydrate import open_hydrator


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kafka-bootstrap", help="brokers (LATTICE_KAFKA_BOOTSTRAP)")
    parser.add_argument("--database-url", help="libpq URL (LATTICE_DATABASE_URL)")
    parser.add_argument("--topic", help="the event log (LATTICE_TOPIC, stripe.events)")


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    return load_settings(
        {
            "kafka_bootstrap": args.kafka_bootstrap,
            "database_url": args.database_url,
            "topic": args.topic,
            **extra,
        }
    )


def _select(names: list[str]) -> list[Any]:
    try:
        return catalog.select(names)
    except catalog.UnknownProjection as exc:
        raise ConfigError(str(exc)) from None


def register(commands: Any) -> None:
    """Add the projector runtime's subcommands to the top-level parser."""
    project = commands.add_parser(
        "project",
        help="run projectors (all by default) until SIGTERM",
        description="Run projections in one process, one consumer group `lattice.<name>` "
        "each. Start the command N times to spread partitions over N processes.",
    )
    project.add_argument("names", nargs="*", metavar="NAME", help="projections to run")
    project.add_argument(
        "--batch-size", type=int, help="records per batch (LATTICE_PROJECTOR_BATCH_SIZE, 5000)"
    )
    project.add_argument(
        "--batch-wait-ms",
        type=int,
        help="how long a batch waits to fill (LATTICE_PROJECTOR_BATCH_WAIT_MS)",
    )
    project.add_argument(
        "--poison-retries",
        type=int,
        help="attempts before a record is dead-lettered (LATTICE_POISON_RETRIES)",
    )
    _common(project)
    project.set_defaults(handler=run_project)

    migrate_cmd = commands.add_parser(
        "migrate",
        help="apply the projections' SQL migrations",
        description="Apply every projection's pending NNNN_name.sql files into schema "
        "`projections` (recorded in lattice.migrations; safe to run concurrently).",
    )
    migrate_cmd.add_argument("names", nargs="*", metavar="NAME", help="projections (all)")
    _common(migrate_cmd)
    migrate_cmd.set_defaults(handler=run_migrate)


def run_project(args: argparse.Namespace) -> int:
    """`lattice project [NAME ...]`."""
    settings = _settings(
        args,
        projector_batch_size=args.batch_size,
        projector_batch_wait_ms=args.batch_wait_ms,
        poison_retries=args.poison_retries,
    )
    settings.require_database_url()
    projections = _select(args.names)
    configure_logging()
    asyncio.run(_project(settings, projections))
    return 0


async def _project(settings: Settings, projections: list[Any]) -> None:
    # Thin events are fetched from Stripe (and cached) only for projections that ask.
    if not any(getattr(p, "hydrate_thin_events", False) for p in projections):
        await run_projections(settings, projections)
        return
    async with open_hydrator(settings) as hydrate:
        await run_projections(settings, projections, hydrate=hydrate)


async def _migrate(settings: Settings, projections: list[Any]) -> list[str]:
    conn = await asyncpg.connect(settings.require_database_url())
    try:
        return await migrate(conn, projections)
    finally:
        await conn.close()


def run_migrate(args: argparse.Namespace) -> int:
    """`lattice migrate [NAME ...]`."""
    settings = _settings(args)
    projections = _select(args.names)
    try:
        applied = asyncio.run(_migrate(settings, projections))
    except MigrationError as exc:
        print(f"lattice: {exc}", file=sys.stderr)
        return 1
    for name in applied:
        print(f"applied {name}")
    if not applied:
        print("nothing to apply", file=sys.stderr)
    return 0
