"""What `lattice simulate` does (its flags are in `ingest.simulate.cli`): imported only
when it runs, so that every other command starts without the simulator, the fake Stripe
API and the report."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys

import httpx

from deploy.flags import settings_from
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
from ingest.workers import check_address


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
