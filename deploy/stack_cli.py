"""`lattice stack up|down|env|status`: the local Kafka broker and PostgreSQL server."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from deploy import stack
from deploy.settings import load_settings


def register(commands: Any) -> None:
    """Add the `stack` subcommand to the top-level parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "stack",
        help="start, stop or describe the local Kafka + PostgreSQL stack",
        description="The local stack: a real Apache Kafka broker (KRaft) and a real "
        "PostgreSQL server on 127.0.0.1, with data under --home (default .lattice/).",
    )
    parser.add_argument("action", choices=["up", "down", "env", "status"])
    parser.add_argument("--home", type=Path, help="data folder (LATTICE_HOME, default .lattice)")
    parser.add_argument("--kafka-port", type=int, help="broker port (LATTICE_KAFKA_PORT, 9092)")
    parser.add_argument("--pg-port", type=int, help="PostgreSQL port (LATTICE_PG_PORT, 55432)")
    parser.add_argument("--partitions", type=int, help="partitions per topic (LATTICE_PARTITIONS)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Carry out `stack up|down|env`."""
    settings = load_settings(
        {
            "home": args.home,
            "kafka_port": args.kafka_port,
            "pg_port": args.pg_port,
            "partitions": args.partitions,
        }
    )
    if args.action == "up":
        info = stack.up(settings)
        kafka_state = "started" if info.kafka_started else "already running"
        pg_state = "started" if info.postgres_started else "already running"
        print(f"kafka      {info.kafka_bootstrap} ({kafka_state})", file=sys.stderr)
        print(f"postgresql {info.database_url} ({pg_state})", file=sys.stderr)
        if info.topics_created:
            print(f"topics     created {', '.join(info.topics_created)}", file=sys.stderr)
        print(
            f"ready in {info.seconds:.1f} s; `. {stack.stack_env_path(settings.home)}` "
            "points a shell at it",
            file=sys.stderr,
        )
    elif args.action == "down":
        stopped = stack.down(settings)
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}", file=sys.stderr)
    elif args.action == "status":
        running = stack.running(settings)
        for name, alive in running.items():
            print(f"{name:<10} {'running' if alive else 'stopped'}")
        return 0 if all(running.values()) else 3
    else:
        env_file = stack.stack_env_path(settings.home)
        if not env_file.exists():
            print("lattice: the stack is not up: run `make stack`", file=sys.stderr)
            return 1
        sys.stdout.write(env_file.read_text())
    return 0
