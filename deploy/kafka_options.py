"""How every Kafka client of a Lattice process connects: plaintext by default, TLS and
SASL as the settings say (`LATTICE_KAFKA_SECURITY_PROTOCOL` and the rest).

`load_settings` configures this once per process; each client is made with
`**kafka_options.options()`, so the receiver, the projectors and every tool (topics,
status, rewind, backfill) reach a secured cluster alike without passing the settings
down to each helper that only knows the bootstrap address.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deploy.settings import Settings

_options: dict[str, Any] = {}


def configure(settings: Settings) -> None:
    """Use `settings`' security for the Kafka clients made from now on."""
    protocol = settings.kafka_security_protocol
    found: dict[str, Any] = {}
    if protocol != "PLAINTEXT":
        found["security_protocol"] = protocol
    if protocol in ("SSL", "SASL_SSL"):
        cafile = settings.kafka_ssl_cafile
        found["ssl_context"] = ssl.create_default_context(
            cafile=str(cafile) if cafile is not None else None
        )
    if protocol.startswith("SASL_"):
        password = settings.kafka_sasl_password
        found["sasl_mechanism"] = settings.kafka_sasl_mechanism
        found["sasl_plain_username"] = settings.kafka_sasl_username
        found["sasl_plain_password"] = password.get_secret_value() if password else None
    _options.clear()
    _options.update(found)


def options() -> dict[str, Any]:
    """Keyword arguments for an aiokafka producer, consumer, admin or client."""
    return dict(_options)
