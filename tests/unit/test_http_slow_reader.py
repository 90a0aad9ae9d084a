"""`OneWriteHttpToolsProtocol` and a client that does not read its answers: once writing
has been paused (buffers full) for `head_timeout` seconds, the connection is aborted
instead of held for ever. Served in process by uvicorn over a small app (no Kafka: the
protocol alone is under test)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from ingest.http import OneWriteHttpToolsProtocol
from tests.support.asgi_server import serving

ANSWER = 1024 * 1024  # bytes per answer
ASKED = 8  # pipelined requests: more than the loopback's buffers hold


class ShortTimeout(OneWriteHttpToolsProtocol):
    head_timeout = 1.0


async def big(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await receive()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(ANSWER).encode())],
        }
    )
    await send({"type": "http.response.body", "body": b"x" * ANSWER})


async def received_after_not_reading(seconds: float) -> int:
    """Ask ASKED answers at once, read nothing for `seconds`, then read to the end: the
    bytes that came."""
    async with serving(big, what="big answers", http=ShortTimeout, timeout_keep_alive=1) as port:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        try:
            writer.write(b"GET /big HTTP/1.1\r\nHost: lattice\r\n\r\n" * ASKED)
            await writer.drain()
            await asyncio.sleep(seconds)
            got = 0
            try:
                while chunk := await asyncio.wait_for(reader.read(1 << 20), 10):
                    got += len(chunk)
            except ConnectionError:
                pass
            return got
        finally:
            writer.close()


async def test_a_client_that_reads_nothing_is_cut_off() -> None:
    got = await received_after_not_reading(3.0)
    assert got < ASKED * ANSWER / 2, got


async def test_a_client_that_reads_in_time_gets_every_answer() -> None:
    got = await received_after_not_reading(0.0)
    assert got > ASKED * ANSWER, got  # every body, and its head
