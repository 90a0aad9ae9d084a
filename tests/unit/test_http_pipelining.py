"""`OneWriteHttpToolsProtocol` refusing a pipelined request's head (431, 408) while the
request before it is still being answered: the earlier answer goes out first, whole, and
only then the refusal and the close. Served in process by uvicorn over a small app whose
answer waits until the test releases it (no Kafka: the protocol alone is under test)."""

from __future__ import annotations

import asyncio
from typing import Any

from ingest.http import MAX_HEAD_BYTES, OneWriteHttpToolsProtocol
from tests.support.asgi_server import serving


class ShortHeadTimeout(OneWriteHttpToolsProtocol):
    # Short for a test, long enough that a busy machine's stall between two pieces of a
    # head (0.1 s apart) does not make it fire in the tests where it must not.
    head_timeout = 1.0


class SlowApp:
    """Answers `200 slow` to every request once `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        self.started.set()
        await self.release.wait()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"4")],
            }
        )
        await send({"type": "http.response.body", "body": b"slow"})


FIRST = b"POST /first HTTP/1.1\r\nHost: lattice\r\nContent-Length: 2\r\n\r\n{}"


async def refused_after_the_first(second: list[bytes], pause: float) -> bytes:
    """Send FIRST, then (once its app runs) `second` piece by piece; release FIRST's
    answer after `pause`; everything the server sent until it closed."""
    app = SlowApp()
    async with serving(app, what="slow app", http=ShortHeadTimeout) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(FIRST)
            await asyncio.wait_for(app.started.wait(), 10)
            for piece in second:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.1)  # each piece a read of its own
            await asyncio.sleep(pause)
            app.release.set()
            return await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()


async def test_an_oversize_pipelined_head_is_refused_after_the_answer_before_it() -> None:
    head = b"GET /second HTTP/1.1\r\nX-Big: "
    sent = await refused_after_the_first([head, b"x" * (MAX_HEAD_BYTES + 1)], pause=0.2)
    first, _, rest = sent.partition(b"slow")
    assert first.startswith(b"HTTP/1.1 200 OK\r\n"), sent[:200]
    assert rest.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), sent[:200]
    assert b"connection: close" in rest.lower()


async def test_an_oversize_head_complete_in_one_read_waits_for_the_answer_before_it() -> None:
    whole = b"GET /second HTTP/1.1\r\nX-Big: " + b"y" * (2 * MAX_HEAD_BYTES) + b"\r\n\r\n"
    sent = await refused_after_the_first([whole], pause=0.2)
    first, _, rest = sent.partition(b"slow")
    assert first.startswith(b"HTTP/1.1 200 OK\r\n"), sent[:200]
    assert rest.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), sent[:200]


async def test_a_stalled_pipelined_head_times_out_after_the_answer_before_it() -> None:
    # The second head stalls past its 1 s bound while the first answer is still held.
    sent = await refused_after_the_first([b"GET /second HTTP/1.1\r\nHost: "], pause=1.6)
    first, _, rest = sent.partition(b"slow")
    assert first.startswith(b"HTTP/1.1 200 OK\r\n"), sent[:200]
    assert rest.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), sent[:200]


async def test_a_pipelined_head_that_is_not_http_is_refused_after_the_answer_before_it() -> None:
    sent = await refused_after_the_first([b"NOT HTTP AT ALL\r\n\r\n"], pause=0.2)
    first, _, rest = sent.partition(b"slow")
    assert first.startswith(b"HTTP/1.1 200 OK\r\n"), sent[:200]
    assert rest.startswith(b"HTTP/1.1 400 Bad Request\r\n"), sent[:200]
    assert rest.endswith(b'{"error":"invalid_http_request"}')
