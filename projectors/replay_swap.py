"""A replay's swap: the rebuilt tables moved in, in one transaction on the session that
holds the replay lock, tried again while readers hold the tables or the database is away.
A swap cut off at its commit may have committed: the tables it moved in are then the live
ones, which `swap_committed` tells, also when another replay took the lock meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from typing import Any

import asyncpg
import structlog

from projectors import shadow
from projectors.base import LIVE_SCHEMA
from projectors.migrate import READ_COMMITTED
from projectors.replay_lock import LockTaken, ReplayLock
from projectors.replay_start import ReplayError

log = structlog.get_logger("lattice.replay")
SWAP_ATTEMPTS = 200
# A swap cut off by these is undone by the server (or committed: see `swap_committed`)
# and tried again on a new session. Not a cancelled statement (a statement_timeout, a
# pg_cancel_backend), an OperatorInterventionError too: that one waits as for readers.
DATABASE_AWAY = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
)


async def swap_in(
    lock: ReplayLock,
    projection: Any,
    schema: str,
    view_owners: Sequence[Any],
    stop: asyncio.Event,
    behind_ok: bool,
) -> list[str]:
    """Swap, backing off while readers hold the tables (never making them wait long) and
    while the database is away (the swap is one transaction: undone if cut off)."""
    delay = 0.05
    built: dict[str, int] = {}  # the shadow's tables and their OIDs, which a swap keeps
    cut_off = False
    for attempt in range(1, SWAP_ATTEMPTS + 1):
        try:
            conn = await lock.session()
            if cut_off and await swap_committed(conn, built.values()):
                return list(built)  # committed, its answer lost with the connection
            built = built or await shadow.table_oids(conn, schema)
            async with conn.transaction(isolation=READ_COMMITTED):
                return await shadow.swap(conn, projection, schema, view_owners, behind_ok=behind_ok)
        except LockTaken:
            # Another replay took the lock while ours was lost. If that loss was only the
            # answer to our commit, the live tables are the ones this replay built.
            if cut_off and await _swap_committed_at(lock.url, built.values()):
                return list(built)
            raise
        except (ReplayError, shadow.ShadowBehind):
            raise
        except shadow.SwapError as exc:
            raise ReplayError(str(exc)) from None
        except shadow.READERS_HOLD as exc:
            if attempt == SWAP_ATTEMPTS or stop.is_set():
                raise ReplayError(
                    f"could not take the locks to swap {projection.name} in after {attempt} "
                    f"attempts ({exc}); long-running queries hold its tables"
                ) from exc
            log.info("swap waiting for readers", projector=projection.name, attempt=attempt)
        except Exception as exc:
            # Only the database going away is waited out: anything else (a view someone
            # built that cannot be created again) fails the same way at every try.
            if not isinstance(exc, DATABASE_AWAY):
                raise ReplayError(
                    f"the swap of {projection.name} failed and was undone "
                    f"({type(exc).__name__}: {exc}); the live tables are unchanged"
                ) from exc
            if attempt == SWAP_ATTEMPTS or stop.is_set():
                raise ReplayError(
                    f"the database went away at the swap of {projection.name} ({exc}); "
                    "the live tables are unchanged, or swapped if it committed: "
                    "`lattice status` shows which"
                ) from exc
            await lock.lost()
            cut_off = True
            log.warning("database unavailable at the swap; retrying", error=str(exc))
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")


async def swap_committed(conn: asyncpg.Connection, built: Collection[int]) -> bool:
    """Whether a swap cut off at its commit did commit: the tables it was swapping in
    (`built`, their OIDs) are the live ones now. Not when another replay, which took the
    lock while it was lost, dropped them (a bare "the shadow schema is gone" would say
    yes)."""
    if not built:
        return False
    live = await conn.fetchval(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = ANY($1::oid[]) AND n.nspname = $2",
        list(built),
        LIVE_SCHEMA,
    )
    return bool(live == len(built))


async def _swap_committed_at(url: str, built: Collection[int]) -> bool:
    """`swap_committed`, asked on a session of its own (the lock is another replay's);
    ReplayError when the database cannot be asked (away, refusing connections)."""
    conn: asyncpg.Connection | None = None
    try:
        conn = await asyncpg.connect(url)
        return await swap_committed(conn, built)
    except Exception as exc:
        raise ReplayError(
            f"the database went away at the swap, and another replay took the lock "
            f"meanwhile; asking whether the swap committed failed too "
            f"({type(exc).__name__}: {exc}); the live tables are unchanged, or swapped if it "
            "committed: `lattice status` shows which"
        ) from exc
    finally:
        if conn is not None:
            conn.terminate()  # no answer to wait for, and nothing that can fail
