"""`OneWriteHttpToolsProtocol` and how a body is framed. A chunked body's trailers never
reach the request's headers, and a body whose trailers (or any run of bytes that are not
body) go on past `MAX_HEAD_BYTES` has its connection closed, long before any body
deadline. An upgrade request with a body is refused, so that body is never parsed as a
request. Served in process by uvicorn over a small app (no Kafka: the protocol alone is
under test)."""

from __future__ import annotations

import asyncio
from typing import Any

from ingest.http import MAX_HEAD_BYTES, OneWriteHttpToolsProtocol
from tests.support.asgi_server import serving

HEAD = b"POST /webhooks/platform HTTP/1.1\r\nHost: lattice\r\nTransfer-Encoding: chunked\r\n\r\n"


class HeadersApp:
    """Reads the whole body, then answers 200 naming how many headers the request has."""

    def __init__(self) -> None:
        self.headers: list[list[tuple[bytes, bytes]]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while True:
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        self.headers.append(list(scope["headers"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def test_trailers_are_read_but_never_become_headers() -> None:
    app = HeadersApp()
    async with serving(app, what="headers app", http=OneWriteHttpToolsProtocol) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(HEAD + b"2\r\n{}\r\n0\r\nx-trailer: 1\r\nexpect: 100-continue\r\n\r\n")
            answer = await asyncio.wait_for(reader.readuntil(b"ok"), 10)
        finally:
            writer.close()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
    [headers] = app.headers
    assert headers == [(b"host", b"lattice"), (b"transfer-encoding", b"chunked")]


async def endless(pieces: list[bytes]) -> tuple[bytes, float]:
    """HEAD and a body's first chunk, then each piece in a read of its own for as long as
    the connection takes them: what the server sent, and how many bytes of pieces went."""
    app = HeadersApp()
    sent = 0
    async with serving(app, what="headers app", http=OneWriteHttpToolsProtocol) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(HEAD + b"2\r\n{}\r\n")
            for piece in pieces:
                if reader.at_eof():
                    break
                writer.write(piece)
                try:
                    await writer.drain()
                except ConnectionError:
                    break
                sent += len(piece)
                await asyncio.sleep(0.002)  # each piece a read of its own
            answer = await asyncio.wait_for(reader.read(), 10)
        except ConnectionError:
            answer = b""
        finally:
            writer.close()
    assert app.headers == [] or all(len(h) == 2 for h in app.headers)
    return answer, sent


async def test_trailers_without_end_close_the_connection() -> None:
    lines = [b"0\r\n"] + [b"a: b\r\n" * 100] * (4 * MAX_HEAD_BYTES // 600)
    answer, sent = await endless(lines)
    assert answer == b""  # no answer: the request never ended
    assert sent < 3 * MAX_HEAD_BYTES


async def test_one_trailer_line_without_end_closes_the_connection() -> None:
    pieces = [b"0\r\nx-long: "] + [b"x" * 4096] * (4 * MAX_HEAD_BYTES // 4096)
    answer, sent = await endless(pieces)
    assert answer == b""
    assert sent < 3 * MAX_HEAD_BYTES


async def test_an_upgrade_with_a_body_is_refused_and_its_body_never_parsed() -> None:
    """The parser would take the body of `Upgrade: h2c` for the new protocol's bytes: the
    app saw an empty body and the declared body, read later, was parsed as a request."""
    app = HeadersApp()
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: lattice\r\n\r\n"
    head = (
        b"POST /webhooks/platform HTTP/1.1\r\nHost: lattice\r\nConnection: Upgrade\r\n"
        b"Upgrade: h2c\r\nContent-Length: " + str(len(smuggled)).encode() + b"\r\n\r\n"
    )
    async with serving(app, what="headers app", http=OneWriteHttpToolsProtocol) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(head)
            await writer.drain()
            await asyncio.sleep(0.1)  # the body in a read of its own
            writer.write(smuggled)
            answer = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
    assert answer.endswith(b'{"error":"upgrade_not_supported"}'), answer
    assert answer.count(b"HTTP/1.1 ") == 1, answer
    assert app.headers == []  # the app never ran, for either


async def test_an_upgrade_without_a_body_is_answered_as_a_plain_request() -> None:
    app = HeadersApp()
    head = (
        b"POST /webhooks/platform HTTP/1.1\r\nHost: lattice\r\nConnection: Upgrade\r\n"
        b"Upgrade: h2c\r\nContent-Length: 0\r\n\r\n"
    )
    async with serving(app, what="headers app", http=OneWriteHttpToolsProtocol) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(head)
            answer = await asyncio.wait_for(reader.readuntil(b"ok"), 10)
        finally:
            writer.close()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
