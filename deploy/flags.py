"""Every setting as a command-line flag: `--kafka-bootstrap` overrides LATTICE_KAFKA_BOOTSTRAP.

Commands name the settings they use; the flags, their help and their defaults all come from
`Settings`, so a new setting is a flag wherever a command lists it.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import SecretStr

from deploy.settings import ENV_PREFIX, Settings, load_settings

DEST_PREFIX = "setting_"

# The settings most commands that touch Kafka and PostgreSQL take.
KAFKA = ("kafka_bootstrap", "topic", "usage_topic")
DATABASE = ("database_url",)
STRIPE_API = ("stripe_api_key", "stripe_api_base", "stripe_api_version")
# How Kafka is reached: every command that takes --kafka-bootstrap takes these too.
KAFKA_SECURITY = (
    "kafka_security_protocol",
    "kafka_sasl_mechanism",
    "kafka_sasl_username",
    "kafka_sasl_password",
    "kafka_ssl_cafile",
)


def port_number(text: str) -> int:
    """An argparse type: a TCP port from 1 to 65535 (the kernel would quietly take 80000
    modulo 65536)."""
    return _port(text, lowest=1)


def port_or_off(text: str) -> int:
    """An argparse type: a TCP port, or 0 for off."""
    return _port(text, lowest=0)


def _port(text: str, *, lowest: int) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not lowest <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port from {lowest} to 65535")
    return port


def _help(name: str) -> str:
    field = Settings.model_fields[name]
    default = field.default
    shown = "" if default in (None, "") or isinstance(default, SecretStr) else f", {default}"
    return f"{field.description} ({ENV_PREFIX}{name.upper()}{shown})"


def add_setting_flags(
    parser: argparse.ArgumentParser,
    names: Iterable[str],
    *,
    aliases: Mapping[str, str] | None = None,
) -> None:
    """Add `--<name>` for each named setting (and an older alias where one is given)."""
    group = parser.add_argument_group(
        "settings", "each flag overrides its LATTICE_* environment variable"
    )
    names = list(names)
    if "kafka_bootstrap" in names:
        names += KAFKA_SECURITY
    for name in dict.fromkeys(names):
        flags = [f"--{name.replace('_', '-')}"]
        if aliases and name in aliases:
            flags.append(aliases[name])
        group.add_argument(
            *flags, dest=DEST_PREFIX + name, metavar=name.split("_")[-1].upper(), help=_help(name)
        )


def setting_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags (None where a flag was not given)."""
    return {
        key.removeprefix(DEST_PREFIX): value
        for key, value in vars(args).items()
        if key.startswith(DEST_PREFIX)
    }


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from the environment with the command's flags on top (ConfigError if bad)."""
    return load_settings(setting_overrides(args))
