"""Work that a shutdown may cut short.

A SIGTERM sets the process's `stop` event; whatever waits meanwhile (a migration on a
reader's lock, a replay copying the live tables, a batch on the hydrator) must give
way at once, and say that it did: `unless_stopped` races the work against the event
and raises `Abandoned` when the event came first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Abandoned(Exception):
    """Shutdown was asked while the work waited (for a lock, a hydrator): nothing of it
    was written."""


async def unless_stopped(work: Coroutine[Any, Any, T], stop: asyncio.Event, what: str) -> T:
    """`work`'s result; Abandoned(`what`) (`work` cancelled, and its statement with it)
    when `stop` is set first."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not task.done():  # stopped, or this call itself cancelled: never outlive it
            task.cancel()
            # What cancelling its statement raised (a connection cut meanwhile) is moot.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    if task.cancelled() or (stop.is_set() and task.exception() is not None):
        raise Abandoned(what)
    return task.result()
