"""`lattice project | migrate | replay | status | rewind`: the projector runtime's commands."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import signal
import sys
import threading
from typing import Any

import asyncpg
import structlog
from prometheus_client import REGISTRY

from deploy.flags import (
    DATABASE,
    KAFKA,
    STRIPE_API,
    add_setting_flags,
    port_or_off,
    settings_from,
)
from deploy.logs import configure_logging
from deploy.settings import ConfigError, Settings
from projectors import catalog, health, status
from projectors.cli_rewind import run_replay, run_rewind
from projectors.metrics import RuntimeMetrics
from projectors.migrate import MigrationError, migrate
from projectors.service import run_projections, tune_gc
from projectors.startup import dependencies_up
from projectors.stopping import Abandoned
from projectors.stripe_api.hydrate import open_hydrator

log = structlog.get_logger("lattice.projector")

PROJECTOR_SETTINGS = (
    *KAFKA,
    *DATABASE,
    *STRIPE_API,
    "projector_batch_size",
    "projector_batch_wait_ms",
    "poison_retries",
    "platform_account",
)
# Only `project` joins consumer groups (a replay reads its partitions by itself).
GROUP_SETTINGS = (*PROJECTOR_SETTINGS, "group_prefix", "projector_session_timeout_ms")
# The flags these commands had before every setting was one; kept so scripts keep working.
ALIASES = {
    "projector_batch_size": "--batch-size",
    "projector_batch_wait_ms": "--batch-wait-ms",
}


def register(commands: Any) -> None:
    """Add the projector runtime's subcommands to the top-level parser."""
    project = commands.add_parser(
        "project",
        help="run projectors (all by default) until SIGTERM",
        description="Run projections in one process, one consumer group each, named "
        "`<group prefix>.<name>` (`lattice.<name>` by default: --group-prefix). Start the "
        "command N times to spread partitions over N processes.",
    )
    project.add_argument("names", nargs="*", metavar="NAME", help="projections to run")
    project.add_argument(
        "--metrics-port",
        type=port_or_off,
        default=0,
        help="serve Prometheus metrics on this port, and GET /readyz: 200 once every "
        "projector has migrated and started its consumer (default: off)",
    )
    project.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address for --metrics-port (default 127.0.0.1; 0.0.0.0 to let a scraper in)",
    )
    add_setting_flags(project, GROUP_SETTINGS, aliases=ALIASES)
    project.set_defaults(handler=run_project)

    migrate_cmd = commands.add_parser(
        "migrate",
        help="apply the projections' SQL migrations",
        description="Apply every projection's pending NNNN_name.sql files into schema "
        "`projections` (recorded in lattice.migrations; safe to run concurrently).",
    )
    migrate_cmd.add_argument("names", nargs="*", metavar="NAME", help="projections (all)")
    add_setting_flags(migrate_cmd, DATABASE)
    migrate_cmd.set_defaults(handler=run_migrate)

    replay_cmd = commands.add_parser(
        "replay",
        help="rebuild a projection from the log and swap it in",
        description="Rebuild NAME into a shadow schema while the live tables keep serving, "
        "catch up to the head of the log, then swap the tables in one transaction. From an "
        "offset or a time the rebuild starts from a copy of the live tables.",
    )
    replay_cmd.add_argument("name", metavar="NAME", help="the projection to rebuild")
    start = replay_cmd.add_mutually_exclusive_group()
    start.add_argument(
        "--from-beginning", action="store_true", help="rebuild from offset 0 (the default)"
    )
    start.add_argument("--offset", metavar="P:N", help="re-apply partition P from offset N")
    start.add_argument("--since", metavar="TIME", help="re-apply from TIME (RFC 3339 or Unix s)")
    add_setting_flags(replay_cmd, PROJECTOR_SETTINGS, aliases=ALIASES)
    replay_cmd.set_defaults(handler=run_replay)

    status_cmd = commands.add_parser(
        "status",
        help="per projector and partition: position, lag, dead letters",
        description="Stored position, log end, lag, time of the last applied event and "
        "dead letters, per projector and partition (replays in progress included); then, "
        "on stderr, what a projection finds wrong with its tables (offsets deleted from "
        "the log before a projector read them; a meter no event described, whose usage "
        "cannot be reconciled).",
    )
    status_cmd.add_argument("names", nargs="*", metavar="NAME", help="projections (all)")
    status_cmd.add_argument("--json", action="store_true", help="one JSON array on stdout")
    add_setting_flags(status_cmd, (*KAFKA, *DATABASE))
    status_cmd.set_defaults(handler=run_status)

    rewind_cmd = commands.add_parser(
        "rewind",
        help="move a stopped downstream consumer group back in the log",
        description="Commit earlier offsets for a downstream consumer GROUP (stop it "
        "first). Lattice's own projectors keep positions in PostgreSQL: use `lattice replay`.",
    )
    rewind_cmd.add_argument(
        "group", metavar="GROUP", help="the downstream consumer group (its members stopped)"
    )
    to = rewind_cmd.add_mutually_exclusive_group(required=True)
    to.add_argument(
        "--since",
        metavar="TIME",
        help="the first record at or after TIME (RFC 3339 such as 2026-11-01T00:00:00Z, or "
        "Unix seconds); never in the future, never moving a partition forward (but to the "
        "log's start where a retention deleted the group's offset)",
    )
    to.add_argument(
        "--to-offset",
        metavar="P:N",
        help="partition P to offset N, of the first --rewind-topic (else the event log)",
    )
    rewind_cmd.add_argument(
        "--new-group",
        action="store_true",
        help="the group has committed nothing yet: create its positions (else refused)",
    )
    rewind_cmd.add_argument(
        "--rewind-topic",
        dest="rewind_topics",
        action="append",
        metavar="TOPIC",
        help="topic(s) to move (default: the event log)",
    )
    add_setting_flags(rewind_cmd, ("kafka_bootstrap", "topic", "group_prefix"))
    rewind_cmd.set_defaults(handler=run_rewind)


def run_project(args: argparse.Namespace) -> int:
    """`lattice project [NAME ...]`."""
    settings = settings_from(args)
    settings.require_database_url()
    projections = catalog.select(args.names, settings=settings)
    configure_logging()
    metrics = RuntimeMetrics(REGISTRY)
    ready = threading.Event()
    if args.metrics_port:
        try:
            health.serve(args.metrics_host, args.metrics_port, metrics.registry, ready)
        except OSError as exc:
            raise ConfigError(
                f"--metrics-port: cannot listen on {args.metrics_host}:{args.metrics_port}: "
                f"{exc.strerror or exc}"
            ) from None
    tune_gc()
    try:
        asyncio.run(_project(settings, projections, metrics, ready))
    except MigrationError as exc:  # a start refused for a migration: one line, as migrate
        print(f"lattice: {exc}", file=sys.stderr)
        return 1
    return 0


async def _project(
    settings: Settings, projections: list[Any], metrics: RuntimeMetrics, ready: threading.Event
) -> None:
    # One stop for the whole run: a SIGTERM while the start waits (for a service, for
    # another process's migrations) ends it as cleanly as one while the projectors run.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The dead-letter topic too: missing, the first poison record would fail its batch.
    topics = sorted({t for p in projections for t in p.topics(settings)} | {settings.dlq_topic})
    if not await dependencies_up(settings, stop, topics):
        return  # stopped while waiting for PostgreSQL or Kafka
    run = functools.partial(run_projections, settings, projections, stop=stop, handle_signals=False)
    # Thin events are fetched from Stripe (and cached) only for projections that ask.
    if not any(getattr(p, "hydrate_thin_events", False) for p in projections):
        await run(metrics=metrics, ready=ready)
        return
    try:
        async with open_hydrator(settings, stop) as hydrate:
            await run(hydrate=hydrate, metrics=metrics, ready=ready)
    except Abandoned as exc:
        log.info("projectors stopped before they started", why=str(exc))


async def _migrate(settings: Settings, projections: list[Any]) -> list[str]:
    conn = await asyncpg.connect(settings.require_database_url())
    try:
        return await migrate(conn, projections)
    finally:
        await conn.close()


def run_migrate(args: argparse.Namespace) -> int:
    """`lattice migrate [NAME ...]`."""
    settings = settings_from(args)
    projections = catalog.select(args.names)
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


def run_status(args: argparse.Namespace) -> int:
    """`lattice status [NAME ...] [--json]`."""
    settings = settings_from(args)
    # A broker that does not answer is said in one line of ours (as `rewind` does);
    # aiokafka's own, in plain text before it, would say it twice.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    projections = catalog.select(args.names)
    missing: list[str] = []
    statuses = asyncio.run(
        status.collect(settings, projections, others=not args.names, missing=missing)
    )
    if args.json:
        import orjson

        sys.stdout.write(orjson.dumps([s.as_json() for s in statuses]).decode() + "\n")
    else:
        print(status.render(statuses))
    # On stderr, so that --json's stdout stays one array.
    for topic in missing:
        print(
            f"warning: topic {topic} does not exist on the broker (a mistyped LATTICE_TOPIC? "
            "`lattice stack up` or the topics Job creates it); its projectors wait for it",
            file=sys.stderr,
        )
    for line in status.deleted_unread(statuses):
        print(f"warning: {line}", file=sys.stderr)
    for line in asyncio.run(status.warnings(settings, projections)):
        print(f"warning: {line}", file=sys.stderr)
    return 0
