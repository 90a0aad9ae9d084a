"""`lattice simulate`: generate a month, deliver it, and (optionally) check the tables."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import httpx

from deploy.flags import DATABASE, KAFKA, add_setting_flags, port_number, settings_from
from deploy.settings import ConfigError, Settings
from ingest.simulate import fake_stripe
from ingest.simulate.deliver import DeliveryFailed, Progress, deliver, produce_facts
from ingest.simulate.generator import Simulation, generate
from ingest.simulate.report import (
    differences,
    read_tables,
    receiver_outcomes,
    wait_caught_up,
)
from ingest.simulate.shapes import API_VERSIONS, MIXED
from ingest.workers import check_address

DEFAULT_URL = "http://127.0.0.1:8000"


def register(commands: Any) -> None:
    """Add the `simulate` subcommand to the top-level parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "simulate",
        help="deliver a realistic billing month, signed like Stripe",
        description="Generate a month of a SaaS platform from a seed (sign-ups, trials, "
        "renewals, dunning, cancellations, plan changes, metered usage, Connect), sign each "
        "event with its endpoint's secret (LATTICE_WEBHOOK_SECRETS) and POST it to the "
        "receiver the way Stripe delivers: some twice, some out of order, some after a "
        "retry. Usage facts go to LATTICE_USAGE_TOPIC.",
    )
    parser.add_argument("--customers", type=int, default=100, help="customers (100)")
    parser.add_argument("--accounts", type=int, default=3, help="connected accounts (3)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (1)")
    parser.add_argument(
        "--api-version",
        default=MIXED,
        choices=[MIXED, *API_VERSIONS],
        help="payload shapes: one Stripe API version, or mixed (default): the endpoint "
        "upgraded from the old to the new on the 35th day, amid the renewals, so objects "
        "made before it get events of both shapes",
    )
    parser.add_argument("--rate", type=float, help="deliveries per second (unlimited)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (8)")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the receiver ({DEFAULT_URL})")
    add_setting_flags(parser, (*KAFKA, *DATABASE, "webhook_secrets"))
    parser.add_argument(
        "--fake-stripe-port",
        type=port_number,
        help="serve the thin events' full bodies on this port while running "
        "(point the projectors' LATTICE_STRIPE_API_BASE at it)",
    )
    parser.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help="after delivering, wait up to SECONDS for the projectors' lag to reach zero",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="after --wait (120 s unless given), print the report and exit 1 unless the "
        "tables equal the simulation's expected totals",
    )
    parser.add_argument(
        "--expected", type=Path, metavar="FILE", help="write the expected totals as JSON to FILE"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="generate and print the expected totals; send nothing",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Carry out `lattice simulate`."""
    if args.customers < 0 or args.accounts < 0:
        raise ConfigError("--customers and --accounts must be zero or more")
    settings = settings_from(args)
    simulation = generate(args.customers, args.accounts, args.seed, args.api_version)
    expected = simulation.expected
    print(
        f"simulated {expected.customers} customers, {args.accounts} connected accounts: "
        f"{expected.events} events in {len(simulation.deliveries)} deliveries, "
        f"{expected.usage_facts} usage facts (seed {args.seed}, digest "
        f"{simulation.digest()[:12]})",
        file=sys.stderr,
    )
    if args.expected:
        try:
            args.expected.write_text(json.dumps(expected.to_json(), indent=2) + "\n")
        except OSError as exc:  # not "cannot reach Kafka" for a folder that is missing
            raise ConfigError(f"--expected: cannot write {args.expected}: {exc.strerror}") from None
    if args.dry_run:
        json.dump(expected.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    try:
        httpx.URL(args.url)
    except httpx.InvalidURL as exc:
        raise ConfigError(f"--url: {exc}") from None
    if (args.wait or args.check) and not settings.database_url:
        raise ConfigError("LATTICE_DATABASE_URL is not set: --wait and --check read the tables")
    if args.fake_stripe_port:
        check_address("127.0.0.1", args.fake_stripe_port)  # taken: one line, not uvicorn's exit
    try:
        return asyncio.run(_run(args, settings, simulation))
    except DeliveryFailed as exc:
        print(f"lattice simulate: {exc}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace, settings: Settings, simulation: Simulation) -> int:
    from ingest.simulate.render import render  # only the reporting path needs it

    secrets = settings.secrets_by_endpoint()
    async with contextlib.AsyncExitStack() as stack:
        if args.fake_stripe_port:
            base = await stack.enter_async_context(
                fake_stripe.serving(simulation.hydrated, port=args.fake_stripe_port)
            )
            print(
                f"fake Stripe API on {base} ({len(simulation.hydrated)} thin events)",
                file=sys.stderr,
            )
        outcome = await deliver(
            simulation.deliveries,
            url=args.url,
            secrets=secrets,
            rate=args.rate,
            concurrency=args.concurrency,
            progress=Progress(len(simulation.deliveries), "webhooks   "),
        )
        await produce_facts(
            simulation.facts,
            bootstrap=settings.kafka_bootstrap,
            topic=settings.usage_topic,
            progress=Progress(len(simulation.facts), "usage facts"),
        )
        print(outcome.line(), file=sys.stderr)
        if not (args.wait or args.check):
            return 0
        try:
            receiver: dict[str, int] | None = await receiver_outcomes(args.url)
        except httpx.HTTPError as exc:  # the report goes on without the receiver's count
            print(f"lattice simulate: no receiver metrics from {args.url}: {exc}", file=sys.stderr)
            receiver = None
        lag, dead = await wait_caught_up(settings, timeout=args.wait or 120.0)
    actual = await read_tables(settings.require_database_url())
    print(
        render(
            simulation.expected,
            actual,
            accepted=outcome.accepted,
            rejected=outcome.rejected,
            broken=outcome.broken_off,
            lag=lag,
            dead=dead,
            receiver=receiver,
        )
    )
    wrong = differences(simulation.expected, actual)
    for line in wrong:
        print(f"MISMATCH {line}", file=sys.stderr)
    if lag:
        print(f"lattice simulate: the projectors still lag by {lag} records", file=sys.stderr)
    return 1 if args.check and (wrong or lag) else 0
