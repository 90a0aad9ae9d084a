"""The session that holds a replay's advisory lock (one replay per projection at a time).

The rebuild writes through a pool that survives a database restart; this one session sits
idle for hours and then does the swap. Lost (a restart, an idle-session timeout, a proxy
dropping idle connections), it also lost the lock with it: `session()` connects again
and takes the lock again, or, if another replay took it meanwhile (and rebuilt the shadow
schema its own way), says so: this one must stop and leave the shadow alone.
"""

from __future__ import annotations

import asyncpg
import structlog

from projectors.replay_start import ReplayError

log = structlog.get_logger("lattice.replay")
# Any constant works; the projection's name is the second key.
REPLAY_LOCK = 0x1A77
TAKE = "SELECT pg_try_advisory_lock($1, hashtext($2))"


class LockTaken(ReplayError):
    """Another replay of the projection holds the lock (the shadow schema is its own)."""


class ReplayLock:
    """The lock of one projection's replay, and the session holding it."""

    def __init__(self, url: str, name: str) -> None:
        self._url = url
        self._name = name
        self._conn: asyncpg.Connection | None = None

    @property
    def held(self) -> bool:
        """Whether this replay took the lock (and so owns the shadow schema)."""
        return self._conn is not None

    async def take(self) -> asyncpg.Connection:
        """Connect and take the lock, or raise LockTaken."""
        conn = await asyncpg.connect(self._url)
        try:
            taken = await conn.fetchval(TAKE, REPLAY_LOCK, self._name)
        except BaseException:
            await conn.close()
            raise
        if not taken:
            await conn.close()
            raise LockTaken(f"a replay of {self._name} is already running")
        self._conn = conn
        return conn

    async def session(self) -> asyncpg.Connection:
        """The session holding the lock; a new one if it was lost (connection errors of
        the new one are raised, for the caller to wait out)."""
        conn = self._conn
        assert conn is not None, "take() first"
        if not conn.is_closed():
            return conn
        self._conn = None  # whatever happens next, the lock is not ours until taken again
        try:
            conn = await self.take()
        except LockTaken:
            raise LockTaken(
                f"the database connection holding the replay lock of {self._name} was lost, "
                f"and another replay of {self._name} took the lock meanwhile; this one stops "
                "(the live tables are unchanged)"
            ) from None
        log.warning("replay lock taken again on a new connection", projector=self._name)
        return conn

    async def lost(self) -> None:
        """The session failed mid-statement: drop it, so `session()` makes a new one."""
        if self._conn is not None:
            self._conn.terminate()

    async def release(self) -> None:
        """Close the session (which releases the lock)."""
        if self._conn is not None:
            await self._conn.close()
