"""`lattice backfill --since TIME [--types ...]`: append the events the log lacks."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiokafka.errors import KafkaError

from deploy.failures import REFUSED, SETTING, server_of
from deploy.flags import DATABASE, STRIPE_API, add_setting_flags, settings_from
from deploy.logs import configure_logging
from deploy.settings import ConfigError, Settings
from ingest.record import rfc3339
from projectors.stripe_api.backfill import BackfillOptions, Progress, backfill
from projectors.stripe_api.client import StripeClient
from projectors.stripe_api.errors import StripeAPIError, StripeAuthError, StripeUnavailable
from projectors.stripe_api.ledger import BackfillError
from projectors.timearg import ArgumentError, parse_time

STRIPE_KEEPS = timedelta(days=30)
MAX_TYPES = 20  # Stripe's limit for `types[]`


def _endpoint_name(text: str) -> str:
    """An argparse type: the `lattice-endpoint` header may not be empty (its schema)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _seconds(text: str) -> float:
    """An argparse type: a duration in seconds, zero or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError("must be zero or more seconds")
    return value


def register(commands: Any) -> None:
    """Add the `backfill` subcommand to the top-level parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "backfill",
        help="append events Stripe has that the log lacks",
        description="List Stripe's events since TIME (snapshot events at GET /v1/events and "
        "thin events at GET /v2/core/events; Stripe keeps 30 days) and append every one the "
        "log does not have to the event log, in the receiver's format with header "
        "`lattice-source: backfill`. The log's contents are read from its index "
        "(projections.events), so `lattice project events` must run: backfill waits for it "
        "to index the log (--wait-for-index). A connected account's events are listed only "
        "when named with --account (the run names the accounts the log has that were not). "
        "Safe to interrupt and run again. Needs LATTICE_STRIPE_API_KEY.",
    )
    parser.add_argument(
        "--since",
        required=True,
        metavar="TIME",
        help="RFC 3339 (2026-11-01T00:00:00Z) or Unix seconds",
    )
    parser.add_argument(
        "--types",
        nargs="+",
        default=[],
        metavar="TYPE",
        help=f"only these event types (at most {MAX_TYPES}; thin ones start with v1. or v2.)",
    )
    parser.add_argument(
        "--account",
        action="append",
        default=[],
        metavar="ACCT",
        help="also list this connected account's events (repeatable)",
    )
    parser.add_argument(
        "--endpoint",
        type=_endpoint_name,
        default="backfill",
        help="the lattice-endpoint header of appended records (backfill)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="count what is missing, append nothing"
    )
    parser.add_argument(
        "--wait-for-index",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the events projector to index what the log holds at "
        "the start, before refusing (60)",
    )
    parser.add_argument(
        "--allow-lag",
        action="store_true",
        help="run at once, even though the events projector has not indexed the "
        "whole log (unindexed events may be appended twice)",
    )
    add_setting_flags(parser, ("kafka_bootstrap", "topic", *DATABASE, *STRIPE_API, "kafka_timeout"))
    parser.set_defaults(handler=run)


class ProgressLine:
    """One line on stderr, rewritten in a terminal, at most once a second elsewhere."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.shown = ""
        self.open = False  # a terminal line without its newline yet

    def __call__(self, state: Progress, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and not self.tty and now - self.last < 1.0:
            return
        self.last = now
        oldest = (
            ""
            if state.oldest is None
            else (f" back to {rfc3339(datetime.fromtimestamp(state.oldest, UTC))}")
        )
        if state.behind and not state.pages:
            line = f"backfill: waiting for the events projector: {state.behind} records behind"
        else:
            line = (
                f"backfill: {state.listed} listed in {state.pages} "
                f"page{'' if state.pages == 1 else 's'}{oldest}; "
                f"{state.missing} missing; {state.appended} appended"
            )
        if final and not self.tty and line == self.shown:
            return  # a log file has this very line already
        # \x1b[K: the rest of a longer line shown before is cleared.
        if self.tty:
            line = "\r" + line + "\x1b[K"
        self.shown = line
        self.open = self.tty and not final
        print(line, end="\n" if final or not self.tty else "", file=sys.stderr, flush=True)

    def end(self) -> None:
        """End an open terminal line, so that what is printed next starts a line."""
        if self.open:
            print(file=sys.stderr, flush=True)
            self.open = False


def run(args: argparse.Namespace) -> int:
    """Carry out `lattice backfill`."""
    settings = settings_from(args)
    settings.require_database_url()
    try:
        since = parse_time(args.since)
    except ArgumentError as exc:
        raise ConfigError(f"--since: {exc}") from None
    if len(args.types) > MAX_TYPES:
        raise ConfigError(f"--types: Stripe filters on at most {MAX_TYPES} types at once")
    if datetime.now(UTC) - since > STRIPE_KEEPS:
        print(
            "backfill: Stripe lists only the last 30 days of events; older ones are gone",
            file=sys.stderr,
        )
    options = BackfillOptions(
        since=since,
        types=tuple(args.types),
        accounts=tuple(args.account),
        endpoint=args.endpoint,
        dry_run=args.dry_run,
        allow_lag=args.allow_lag,
        lag_wait=args.wait_for_index,
    )
    configure_logging("warning")
    line = ProgressLine()
    try:
        try:
            state = asyncio.run(_run(settings, options, line))
        except BaseException:
            line.end()  # the error (or "interrupted") on a line of its own
            raise
    except BackfillError as exc:
        print(f"lattice: {exc}", file=sys.stderr)
        return 1
    except REFUSED:
        raise  # a wrong login or database name: a setting's one line and exit status 2
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, KafkaError) as exc:
        server = server_of(exc)
        check = (
            "check that PostgreSQL and Kafka answer"
            if server is None
            else f"{server}: check that it answers ({SETTING[server]} says where)"
        )
        print(
            f"lattice: backfill stopped: {type(exc).__name__}: {exc}; {check}, "
            "then run the same command again",
            file=sys.stderr,
        )
        return 1
    except StripeUnavailable as exc:
        print(
            f"lattice: Stripe API: {exc}; run the same command again when it answers "
            "(nothing is appended twice)",
            file=sys.stderr,
        )
        return 1
    except StripeAuthError as exc:
        print(
            f"lattice: Stripe refused LATTICE_STRIPE_API_KEY: {exc} (check the key, its mode "
            "and its permissions; retrying will not help)",
            file=sys.stderr,
        )
        return 1
    except StripeAPIError as exc:
        print(f"lattice: Stripe API: {exc}", file=sys.stderr)
        return 1
    line(state, final=True)
    verb = "would append" if args.dry_run else "appended"
    print(
        f"{state.missing} events missing from the log ({verb} "
        f"{state.missing if args.dry_run else state.appended}); {state.in_log} already in "
        f"the log, {state.earlier_backfill} appended by an earlier backfill"
    )
    for account, why in state.refused.items():
        print(
            f"lattice: account {account} was not listed: {why}; the other accounts' "
            "events were; run again with that --account once it answers",
            file=sys.stderr,
        )
    for account, why in state.thin_refused.items():
        print(
            f"lattice: the thin events of {account} (GET /v2/core/events) were not listed: "
            f"{why}; its snapshot events were; run again once Stripe lists them (an HTTP "
            "403 says the key lacks access to v2 events; --types without thin ones skips "
            "them)",
            file=sys.stderr,
        )
    for event_id, size in state.too_large.items():
        print(
            f"lattice: event {event_id} was not appended: {size:,} bytes, over "
            "LATTICE_MAX_BODY_BYTES (the receiver refuses it too; raise both, and the "
            "topic's max.message.bytes, to take it)",
            file=sys.stderr,
        )
    if state.unlisted_accounts:
        shown = " ".join(f"--account {a}" for a in state.unlisted_accounts[:10])
        more = len(state.unlisted_accounts) - 10
        print(
            f"backfill: {len(state.unlisted_accounts)} connected accounts have events in the "
            f"log but were not listed; to backfill theirs too: {shown}"
            + (f" (and {more} more)" if more > 0 else ""),
            file=sys.stderr,
        )
    return 1 if state.refused or state.thin_refused or state.too_large else 0


async def _run(settings: Settings, options: BackfillOptions, line: ProgressLine) -> Progress:
    async with StripeClient.from_settings(settings) as client:
        return await backfill(settings, client, options, line)
