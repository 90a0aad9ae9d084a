"""Which server a failure came from, when its exception does not say (a plain socket
error raised inside a client library), and the setting that says where that server is."""

from __future__ import annotations

import asyncpg
from aiokafka.errors import KafkaError

# PostgreSQL refusing the login or the database name: a wrong setting, which no wait mends
# (exit status 2, as for any bad setting, from every command).
REFUSED = (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidCatalogNameError)
# The setting that names each server's address, for "... says where".
SETTING = {"Kafka": "LATTICE_KAFKA_BOOTSTRAP", "PostgreSQL": "LATTICE_DATABASE_URL"}
_CLIENTS = {"aiokafka": "Kafka", "asyncpg": "PostgreSQL"}


def server_of(exc: BaseException) -> str | None:
    """ "Kafka" or "PostgreSQL": by the exception's type, else by the client library it was
    raised in (the innermost one on its traceback); None when neither says."""
    if isinstance(exc, KafkaError):
        return "Kafka"
    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
        return "PostgreSQL"
    found = None
    tb = exc.__traceback__
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        found = _CLIENTS.get(module.partition(".")[0], found)
        tb = tb.tb_next
    return found
