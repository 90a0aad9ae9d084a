"""`lattice simulate`: generate a month, deliver it, and (optionally) check the tables."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from deploy.flags import DATABASE, KAFKA, add_setting_flags, port_number
from ingest.simulate.shapes import API_VERSIONS, MIXED

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
    # Imported when the command runs (deploy.cli): the others start without the simulator.
    parser.set_defaults(handler="ingest.simulate.command:run")
