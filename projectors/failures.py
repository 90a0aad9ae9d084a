"""Whose failure is it: the database's (retry the batch whole, later) or a record's?

The runner, replay and the batch applier all ask this of every exception: a failure of
the database itself must never dead-letter records, and a record's own failure must not
stall a partition forever.
"""

from __future__ import annotations

import asyncpg
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

# SQLSTATE classes that say the database (or our schema) is wrong, not one record: a lost
# connection (08), transaction state (25), rollback (40), a missing table or column or a
# permission (42, e.g. a migration half-deployed), resources (53), a lock not available
# (55), operator intervention such as a restart (57), system and internal errors (58, XX),
# an unsupported feature (0A). Isolating records would dead-letter every one of them.
SYSTEM_SQLSTATE_CLASSES = frozenset({"08", "25", "40", "42", "53", "55", "57", "58", "0A", "XX"})


def is_transient(exc: BaseException) -> bool:
    """True for failures of the database itself, not of a record: a lost or refused
    connection, a server starting or shutting down, a serialization failure or deadlock, a
    plan made stale by a replay swap, a schema that does not match the code yet. The batch
    is retried whole after a pause; nothing is dead-lettered. A URL asyncpg cannot use
    (`sslmode=bogus`) is none of these: no wait mends it."""
    if isinstance(exc, asyncpg.ClientConfigurationError):
        return False
    if isinstance(exc, KafkaError):
        # The dead-letter producer, in the batch's transaction: a broker away, a leader
        # moving, a send timing out or the topic missing (deleted under the runner: the
        # wait line names it, as at start) is waited out like the database; a letter
        # refused for good (larger than the broker takes) is raised.
        return bool(exc.retriable) or isinstance(exc, KafkaConnectionError | KafkaTimeoutError)
    if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError):
        return True
    if isinstance(
        exc,
        asyncpg.PostgresConnectionError
        | asyncpg.exceptions.OperatorInterventionError
        | asyncpg.exceptions.InvalidCachedStatementError
        | asyncpg.exceptions.InsufficientResourcesError
        # "another operation is in progress": a connection left mid-query by a crash.
        | asyncpg.exceptions.InternalClientError,
    ):
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate[:2] in SYSTEM_SQLSTATE_CLASSES
