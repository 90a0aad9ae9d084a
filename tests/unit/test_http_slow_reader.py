"""`OneWriteHttpToolsProtocol` and a client that does not read its answers: once nothing
of what waits for it has been sent for `head_timeout` seconds (writing paused, buffers
full), the connection is aborted instead of held for ever; a client that reads, however
slowly, keeps it. Served in process by uvicorn over a small app (no Kafka: the protocol
alone is under test), with small socket buffers on both ends so that little data fills
them."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from ingest.http import OneWriteHttpToolsProtocol
from tests.support.asgi_server import serving

ANSWER = 512 * 1024  # bytes per answer
ASKED = 2  # pipelined requests
BUFFER = 4096  # each socket's kernel buffer


class SmallBuffers(OneWriteHttpToolsProtocol):
    # Short for a test; long enough that a busy machine's stall does not cut off the slow
    # reader (whose reads come 10 ms apart).
    head_timeout = 1.5

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
        super().connection_made(transport)


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


async def received(*, wait: float, pace: float) -> int:
    """Ask ASKED answers at once, read nothing for `wait` seconds, then read to the end,
    sleeping `pace` seconds after each read: the bytes that came."""
    async with serving(big, what="big answers", http=SmallBuffers, timeout_keep_alive=1) as port:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=BUFFER)
        try:
            writer.write(b"GET /big HTTP/1.1\r\nHost: lattice\r\n\r\n" * ASKED)
            await writer.drain()
            await asyncio.sleep(wait)
            got = 0
            try:
                while chunk := await asyncio.wait_for(reader.read(BUFFER), 10):
                    got += len(chunk)
                    await asyncio.sleep(pace)
            except ConnectionError:
                pass
            return got
        finally:
            writer.close()


async def test_a_client_that_reads_nothing_is_cut_off() -> None:
    got = await received(wait=3.5, pace=0.0)
    assert got < ASKED * ANSWER / 2, got


async def test_a_client_that_reads_slowly_gets_every_answer() -> None:
    """Writing stays paused for seconds on end (the buffer does not fall to its low mark
    for as long), but some of what waits is sent in every stretch of it."""
    got = await received(wait=0.0, pace=0.01)
    assert got > ASKED * ANSWER, got  # every body, and its head
