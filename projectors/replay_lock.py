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
        # Taken, and not known to be taken by another since (the shadow schema is ours).
        self._ours = False

    @property
    def url(self) -> str:
        """The database the lock is taken in."""
        return self._url

    @property
    def held(self) -> bool:
        """Whether this replay took the lock (and so owns the shadow schema)."""
        return self._ours

    async def take(self) -> asyncpg.Connection:
        """Connect and take the lock, or raise LockTaken."""
        conn = await self._connect_and_take()
        if conn is None:
            raise LockTaken(f"a replay of {self._name} is already running")
        self._conn, self._ours = conn, True
        return conn

    async def session(self) -> asyncpg.Connection:
        """The session holding the lock; a new one if it was lost (connection errors of
        the new one are raised, for the caller to wait out and ask again)."""
        assert self._ours, "take() first"
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        self._conn = None
        conn = await self._connect_and_take()
        if conn is None:
            self._ours = False
            raise LockTaken(
                f"the database connection holding the replay lock of {self._name} was lost, "
                f"and another replay of {self._name} took the lock meanwhile; this one stops "
                "(the live tables are unchanged)"
            )
        log.warning("replay lock taken again on a new connection", projector=self._name)
        self._conn = conn
        return conn

    async def _connect_and_take(self) -> asyncpg.Connection | None:
        """A new session holding the lock, or None if another holds it."""
        conn = await asyncpg.connect(self._url)
        try:
            taken = await conn.fetchval(TAKE, REPLAY_LOCK, self._name)
        except BaseException:
            conn.terminate()
            raise
        if not taken:
            await conn.close()
            return None
        return conn

    async def lost(self) -> None:
        """The session failed mid-statement: drop it, so `session()` makes a new one."""
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None

    async def release(self) -> None:
        """Close the session (which releases the lock)."""
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
