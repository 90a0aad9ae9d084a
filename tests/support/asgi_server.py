"""An ASGI app served by uvicorn inside the test's event loop, on a free loopback port."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn

from tests.support.wait import eventually


@asynccontextmanager
async def serving(app: Any, *, what: str, **config: Any) -> AsyncIterator[int]:
    """Serve `app` (uvicorn `config` on top of quiet test defaults) until the block ends;
    yields the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    options: dict[str, Any] = {
        "log_config": None,  # leave the process's logging as the tests configured it
        "log_level": "warning",
        "lifespan": "off",
        "ws": "none",
        "access_log": False,
        "timeout_graceful_shutdown": 1,
        **config,
    }
    server = uvicorn.Server(uvicorn.Config(app, **options))
    task = asyncio.create_task(server.serve(sockets=[sock]))

    async def started() -> bool:
        return bool(server.started)

    try:
        await eventually(started, timeout=10, what=f"{what} started")
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task
        sock.close()
