"""Prepare a fresh, isolated namespace for `make demo` and write `.lattice/demo/env`.

The demo gets its own topics (`demo.stripe.events`, ...) and database (`lattice_demo`),
emptied on every run, so its tables always show exactly one simulated month and nothing
else on the shared stack is touched. Run as `python -m deploy.demo_env HOME` with
`.lattice/stack.env` sourced.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient

from deploy import kafka_options
from deploy.settings import load_settings
from deploy.stack import DEMO_DATABASE, write_env
from deploy.stack.errors import StackError
from deploy.stack.process import can_bind, pick_port, require_free_port
from deploy.stack.topics import ensure_topics, record_limits_for
from ingest.simulate.generator import DELIVER, generate

PREFIX = "demo"
DATABASE = DEMO_DATABASE
RECEIVER_PORT = 8000


def demo_port(variable: str, what: str, preferred: int | None = None) -> int:
    """The port `variable` names when set (StackError when it is no port or something
    listens there, naming what), else `preferred` when it is free, else a free one below
    the kernel's ephemeral range, where no outgoing connection takes it in the seconds
    before the demo's server binds it."""
    given = os.environ.get(variable, "").strip()
    if given:
        if not given.isdigit() or not 0 < int(given) < 65536:
            raise StackError(f"{variable}={given!r} is not a port number")
        require_free_port(int(given), what, variable)
        return int(given)
    if preferred is not None and can_bind(preferred):
        return preferred
    return pick_port()


async def _fresh_topics(
    bootstrap: str, names: list[str], partitions: int, usage: str, limits: dict[str, int]
) -> None:
    admin = AIOKafkaAdminClient(**kafka_options.options(), bootstrap_servers=bootstrap)
    await admin.start()
    try:
        doomed = [name for name in names if name in set(await admin.list_topics())]
        if doomed:
            await admin.delete_topics(doomed)
        deadline = time.monotonic() + 60
        while set(names) & set(await admin.list_topics()):  # deletion is asynchronous
            if time.monotonic() > deadline:
                raise RuntimeError(f"Kafka did not delete the old demo topics {doomed}")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
    await ensure_topics(
        bootstrap, names, partitions=partitions, append_time=[usage], record_limits=limits
    )


async def _fresh_database(url: str) -> str:
    where = urlsplit(url)
    if where.path == f"/{DATABASE}":  # a shell that sourced the demo's env: not from inside it
        where = where._replace(path="/postgres")
    admin = await asyncpg.connect(urlunsplit(where))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await admin.close()
    return urlunsplit(urlsplit(url)._replace(path=f"/{DATABASE}"))


async def prepare(receiver: int, stripe: int) -> dict[str, str]:
    """Empty the demo's topics and database; return the demo's environment, with the
    receiver's and the fake Stripe API's ports."""
    settings = load_settings()
    topic, usage = f"{PREFIX}.stripe.events", f"{PREFIX}.usage.reported"
    await _fresh_topics(
        settings.kafka_bootstrap,
        [topic, f"{topic}.dlq", usage],
        settings.partitions,
        usage,
        record_limits_for(topic, settings.max_body_bytes),
    )
    database_url = await _fresh_database(settings.require_database_url())
    return {
        "LATTICE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "LATTICE_DATABASE_URL": database_url,
        "LATTICE_TOPIC": topic,
        "LATTICE_USAGE_TOPIC": usage,
        # Fresh signing secrets each run, as if two endpoints had just been created.
        "LATTICE_WEBHOOK_SECRETS": f"platform=whsec_{secrets.token_hex(16)},"
        f"connect=whsec_{secrets.token_hex(16)}",
        # The simulator serves the thin events' bodies itself: a stand-in for Stripe's API.
        "LATTICE_STRIPE_API_KEY": "sk_test_lattice_demo",
        "LATTICE_STRIPE_API_BASE": f"http://127.0.0.1:{stripe}",
        "DEMO_RECEIVER_PORT": str(receiver),
        "DEMO_STRIPE_PORT": str(stripe),
    }


def main() -> int:
    """Entry point: `python -m deploy.demo_env HOME`."""
    home = Path(sys.argv[1] if len(sys.argv) > 1 else ".lattice/demo")
    try:
        receiver = demo_port("DEMO_RECEIVER_PORT", "the demo's receiver", RECEIVER_PORT)
        stripe = demo_port("DEMO_STRIPE_PORT", "the demo's stand-in Stripe API")
    except StackError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    try:
        values = asyncio.run(prepare(receiver, stripe))
    except Exception as exc:  # the stack answered `stack up`, then failed: one line
        print(
            f"demo: could not prepare the demo's topics and database: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return 1
    home.mkdir(parents=True, exist_ok=True)
    env = home / "env"
    write_env(env, values)  # it holds signing secrets
    _example_event(home / "event.json")
    print(env)
    return 0


def _example_event(path: Path) -> None:
    """One more event for `lattice send` to try by hand: a new customer's
    `customer.created`, in the simulator's (Stripe's) shape, with ids of its own."""
    simulation = generate(1, 0, seed=secrets.randbelow(2**31))
    for delivery in simulation.deliveries:
        if delivery.kind == DELIVER and b'"customer.created"' in delivery.body:
            path.write_bytes(delivery.body)
            return


if __name__ == "__main__":
    sys.exit(main())
