"""`lattice replay` and `lattice rewind`: the commands that take a reader back in the log
(Lattice's own tables, rebuilt; a downstream consumer group, moved)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from contextlib import AsyncExitStack
from datetime import UTC, datetime

from deploy.flags import settings_from
from deploy.logs import configure_logging
from deploy.settings import ConfigError, Settings
from projectors import catalog
from projectors.intake import group_of
from projectors.progress import Progress
from projectors.replay import INTERRUPTED, replay
from projectors.replay_start import ReplayError, StartAt
from projectors.rewind import RewindError, rewind
from projectors.service import dead_letter_producer, tune_gc
from projectors.stopping import Abandoned
from projectors.stripe_api.hydrate import open_hydrator
from projectors.timearg import ArgumentError, parse_partition_offset, parse_time


def _print_progress(progress: Progress) -> None:
    eta = progress.eta_seconds
    left = "?" if eta is None else f"{int(eta) // 60}m{int(eta) % 60:02d}s"
    print(
        f"\rreplay: {progress.done:,}/{progress.total:,} events  "
        f"{progress.rate:,.0f} events/s  {left} left   ",
        end="",
        file=sys.stderr,
        flush=True,
    )


async def _replay(settings: Settings, name: str, start: StartAt) -> int:
    projection = catalog.select([name], settings=settings)[0]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncExitStack() as stack:
        dead_letters = await stack.enter_async_context(dead_letter_producer(settings))
        hydrate = None
        if getattr(projection, "hydrate_thin_events", False):
            try:
                hydrate = await stack.enter_async_context(open_hydrator(settings, stop))
            except Abandoned:  # SIGTERM while another process's migrations were waited for
                raise ReplayError(INTERRUPTED) from None
        result = await replay(
            settings,
            projection,
            start,
            dead_letters,
            view_owners=list(catalog.discover().values()),
            hydrate=hydrate,
            on_progress=_print_progress,
            stop=stop,
        )
    print(
        f"\nreplay: {name} rebuilt from {result.records:,} events in "
        f"{result.seconds:.1f} s and swapped in ({', '.join(result.tables)})",
        file=sys.stderr,
    )
    return 0


def run_replay(args: argparse.Namespace) -> int:
    """`lattice replay NAME [--from-beginning | --offset P:N | --since TIME]`."""
    settings = settings_from(args)
    try:
        # `is None`: an empty value (an unset variable in a script) is refused by the
        # parsers, never taken for "no start given" and a rebuild from offset 0.
        start = StartAt(
            from_beginning=args.from_beginning or (args.offset is None and args.since is None),
            partition_offset=None if args.offset is None else parse_partition_offset(args.offset),
            since=None if args.since is None else parse_time(args.since),
        )
    except ArgumentError as exc:
        raise ConfigError(str(exc)) from None
    configure_logging()
    tune_gc()
    try:
        return asyncio.run(_replay(settings, args.name, start))
    except ReplayError as exc:
        print(f"\nlattice: {exc}", file=sys.stderr)
        return 1


def run_rewind(args: argparse.Namespace) -> int:
    """`lattice rewind GROUP --since TIME | --to-offset P:N`."""
    settings = settings_from(args)
    ours = {group_of(name, settings.group_prefix): name for name in catalog.discover()}
    if (name := ours.get(args.group)) is not None:
        raise ConfigError(
            f"{args.group} is a Lattice projector: its positions live in PostgreSQL; "
            f"use `lattice replay {name}`"
        )
    try:
        since = parse_time(args.since) if args.since else None
        to_offset = parse_partition_offset(args.to_offset) if args.to_offset else None
    except ArgumentError as exc:
        raise ConfigError(str(exc)) from None
    if since is not None and since > datetime.now(UTC):
        raise ConfigError(
            f"--since {args.since} is in the future: the group would skip every record it "
            "has not read yet"
        )
    # Our one line says why a commit was refused; aiokafka's own warnings about it (plain
    # text, before ours) would only confuse.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        moves = asyncio.run(
            rewind(
                settings.kafka_bootstrap,
                args.group,
                topics=args.rewind_topics or [settings.topic],
                since=since,
                to_offset=to_offset,
                new_group=args.new_group,
            )
        )
    except RewindError as exc:
        print(f"lattice: {exc}", file=sys.stderr)
        return 1
    for move in moves:
        where = f"{args.group} {move.partition.topic}:{move.partition.partition}"
        if move.after is None:
            print(f"{where} - (never committed: left to the consumer's auto.offset.reset)")
            continue
        before = "-" if move.before is None else str(move.before)
        print(f"{where} {before} -> {move.after}")
    return 0
