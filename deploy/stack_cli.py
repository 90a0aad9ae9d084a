"""`lattice stack up|down|env|status`: the local Kafka broker and PostgreSQL server."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from deploy import stack
from deploy.flags import add_setting_flags, settings_from
from deploy.settings import ConfigError, without_password


def register(commands: Any) -> None:
    """Add the `stack` subcommand to the top-level parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "stack",
        help="start, stop or describe the local Kafka + PostgreSQL stack",
        description="The local stack: a real Apache Kafka broker (KRaft) and a real "
        "PostgreSQL server on 127.0.0.1, with data under --home (default .lattice/). "
        "Given servers elsewhere (LATTICE_KAFKA_BOOTSTRAP, LATTICE_DATABASE_URL), `up` "
        "starts nothing of its own for them: it waits for them and creates the topics "
        "(how a deployment provisions its cluster).",
    )
    parser.add_argument(
        "action",
        choices=["up", "down", "env", "status"],
        help="up: start what is not running, create the topics, write stack.env; down: stop "
        "the local services; env: print stack.env; status: say what runs, asking an "
        "external service (exit 3 unless all)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=stack.SERVICES,
        metavar="SERVICE",
        help="with down: stop this service alone (kafka or postgresql; repeatable)",
    )
    add_setting_flags(
        parser,
        (
            "home",
            "kafka_port",
            "pg_port",
            "partitions",
            "replication_factor",
            "kafka_bootstrap",
            "topic",
            "usage_topic",
            "database_url",
        ),
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Carry out `stack up|down|env`."""
    if args.only and args.action != "down":
        # `up --only postgresql` used to start both: say so rather than do what was not asked.
        raise ConfigError(
            f"--only works with `stack down`; `stack {args.action}` is for both services "
            "(point LATTICE_KAFKA_BOOTSTRAP or LATTICE_DATABASE_URL at a server of your own "
            "to have `up` start only the other)"
        )
    settings = settings_from(args)
    if args.action == "up":
        info = stack.up(settings)
        kafka_state = "started" if info.kafka_started else "already running"
        pg_state = "started" if info.postgres_started else "already running"
        print(f"kafka      {info.kafka_bootstrap} ({kafka_state})", file=sys.stderr)
        print(f"postgresql {without_password(info.database_url)} ({pg_state})", file=sys.stderr)
        if info.topics_created:
            print(f"topics     created {', '.join(info.topics_created)}", file=sys.stderr)
        print(
            f"ready in {info.seconds:.1f} s; `. {stack.stack_env_path(settings.home)}` "
            "points a shell at it",
            file=sys.stderr,
        )
    elif args.action == "down":
        stopped = stack.down(settings, only=args.only or stack.SERVICES)
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}", file=sys.stderr)
    elif args.action == "status":
        running, given = stack.running(settings), stack.external(settings)
        for name, alive in running.items():
            if given[name]:  # asked, not assumed: an external service must answer
                print(f"{name:<10} {'running' if alive else 'not answering'} (external)")
            else:
                print(f"{name:<10} {'running' if alive else 'stopped'}")
        return 0 if all(running.values()) else 3
    else:
        env_file = stack.stack_env_path(settings.home)
        if not env_file.exists():
            print(
                f"lattice: no stack is up in {settings.home}: run `lattice stack up` with the "
                "same --home (`make stack` for the default one)",
                file=sys.stderr,
            )
            return 1
        sys.stdout.write(env_file.read_text())
    return 0
