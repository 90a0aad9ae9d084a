"""`lattice`: one command line for the receiver, the projectors and the local stack.

Each package adds its own subcommands (`ingest.cli`, `projectors.cli`, `deploy.stack_cli`);
this module only wires them and turns configuration errors into one line on stderr.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import cast

import asyncpg
from aiokafka.errors import KafkaConnectionError, KafkaError

from deploy import stack_cli
from deploy.failures import REFUSED, SETTING, server_of
from deploy.settings import ConfigError
from deploy.stack.errors import StackError
from ingest import cli as ingest_cli
from ingest.simulate import cli as simulate_cli
from projectors import cli as projectors_cli
from projectors.stripe_api import cli as stripe_api_cli

# A one-shot command (status, migrate, replay, rewind, ...) that cannot reach Kafka or
# PostgreSQL says so in one line; `lattice project` and `lattice serve` wait instead.
UNREACHABLE = (
    ConnectionError,
    TimeoutError,
    socket.gaierror,
    FileNotFoundError,  # PostgreSQL's Unix socket (a URL naming a socket folder) is not there
    KafkaConnectionError,
    asyncpg.PostgresConnectionError,
)
# What the socket layer says of an address it cannot reach (besides ConnectionError):
# no route to the host or its network (a VPN down), or every address of a name failing
# ("Multiple exceptions", localhost as ::1 and 127.0.0.1), which has no errno.
UNREACHABLE_ERRNOS = frozenset(
    {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN, errno.EADDRNOTAVAIL}
)


def _unreachable(exc: BaseException) -> bool:
    if isinstance(exc, UNREACHABLE):
        return True
    return isinstance(exc, OSError) and (
        exc.errno in UNREACHABLE_ERRNOS or str(exc).startswith("Multiple exceptions")
    )


def _unreachable_line(exc: BaseException) -> str:
    """Which server could not be reached, when the error says, and where it is set."""
    server = server_of(exc)
    # A KafkaError's text starts with its type's name already.
    what = str(exc) if isinstance(exc, KafkaError) else f"{type(exc).__name__}: {exc}"
    if server is None:
        return (
            f"cannot reach Kafka or PostgreSQL: {what} (is the stack up? "
            "LATTICE_KAFKA_BOOTSTRAP and LATTICE_DATABASE_URL say where)"
        )
    return f"cannot reach {server}: {what} (is the stack up? {SETTING[server]} says where)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="lattice",
        description="Lattice: verify Stripe webhooks, log them to Kafka, project them into "
        "PostgreSQL. Every setting is a LATTICE_* environment variable or a flag.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    stack_cli.register(commands)
    ingest_cli.register(commands)
    projectors_cli.register(commands)
    stripe_api_cli.register(commands)
    simulate_cli.register(commands)
    return parser


def handler_of(args: argparse.Namespace) -> Callable[[argparse.Namespace], int]:
    """The function that carries out the parsed command. A subcommand may name it as
    "module:function", imported only when that command runs, so that the others start
    without what it alone needs."""
    handler = args.handler
    if isinstance(handler, str):
        module, _, name = handler.partition(":")
        handler = getattr(importlib.import_module(module), name)
    return cast(Callable[[argparse.Namespace], int], handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; exit status 2 with one line on a configuration error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = handler_of(args)(args)
    except (ConfigError, StackError) as exc:
        print(f"lattice: {exc}", file=sys.stderr)
        return 2
    except asyncpg.ClientConfigurationError as exc:  # a URL parameter asyncpg cannot use
        print(f"lattice: LATTICE_DATABASE_URL: {exc}", file=sys.stderr)
        return 2
    except REFUSED as exc:  # a login or database name wrong: a setting, as `project` says
        print(f"lattice: PostgreSQL refused: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lattice: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `lattice status | head`: the reader left. Quietly stop, as Unix tools do; point
        # stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:
        if _unreachable(exc):
            print(f"lattice: {_unreachable_line(exc)}", file=sys.stderr)
            return 1
        # What the server said to a one-shot command (a read-only replica or role, a missing
        # grant, too many connections; a broker that answered its bootstrap but not the
        # request): one line. `serve` and `project` keep the traceback in their log.
        if args.command not in ("serve", "project"):
            if isinstance(exc, asyncpg.PostgresError):
                print(f"lattice: PostgreSQL: {type(exc).__name__}: {exc}", file=sys.stderr)
                return 1
            if isinstance(exc, KafkaError):  # its text starts with its type's name
                print(f"lattice: Kafka: {exc}", file=sys.stderr)
                return 1
        raise
    return code


if __name__ == "__main__":
    sys.exit(main())
