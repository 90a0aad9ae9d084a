"""`lattice serve` over raw HTTP/1.1: pipelining and `Expect: 100-continue` still work
with each answer sent in one write (`ingest.held_writes.HeldWrites`)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import orjson
import pytest

from deploy.settings import Settings
from ingest.http import MAX_HEAD_BYTES
from tests.integration.test_receiver import (
    PLATFORM_NEW,
    by_event_id,
    encode,
    signed,
    subscription_event,
)
from tests.integration.test_receiver_cli import served, serving
from tests.support.kafka import read_all

pytestmark = pytest.mark.integration
__all__ = ["served"]  # the fixture, imported to be used here


def delivery_head(body: bytes, *, expect: bool = False, length: str | None = None) -> bytes:
    headers = signed(body, PLATFORM_NEW)
    lines = [
        b"POST /webhooks/platform HTTP/1.1",
        b"Host: lattice",
        f"Content-Length: {length or len(body)}".encode(),
        *(f"{name}: {value}".encode() for name, value in headers.items()),
        *([b"Expect: 100-continue"] if expect else []),
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One response: its status line and its body (by Content-Length)."""
    status = await reader.readline()
    length = 0
    while (line := await reader.readline()) != b"\r\n":
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status.rstrip(), await reader.readexactly(length)


async def test_pipelined_requests_and_100_continue_on_one_connection(
    served: tuple[str, dict[str, str]], settings: Settings
) -> None:
    url, _ = served
    port = int(url.rsplit(":", 1)[1])
    events = [subscription_event(1), subscription_event(2)]
    first, second = (encode(event) for event in events)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        # A probe and a delivery written at once: two answers, in order.
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: lattice\r\n\r\n")
        writer.write(delivery_head(first) + first)
        healthz = await asyncio.wait_for(answer(reader), 10)
        accepted = await asyncio.wait_for(answer(reader), 10)
        assert healthz[0] == b"HTTP/1.1 200 OK"
        assert accepted == (b"HTTP/1.1 200 OK", b'{"received":true}')

        # The interim answer comes before the body is sent, then the final one.
        writer.write(delivery_head(second, expect=True))
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(second)
        assert await asyncio.wait_for(answer(reader), 10) == (
            b"HTTP/1.1 200 OK",
            b'{"received":true}',
        )
    finally:
        writer.close()
    # A delivery pipelined behind another, its body still arriving when the first is
    # answered: not taken for a body left unread, so its connection is not cut after the
    # second an unread body's rest is given (its own body deadline is 10 s).
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        third, fourth = (encode(subscription_event(n)) for n in (5, 6))
        writer.write(delivery_head(third) + third + delivery_head(fourth) + fourth[:10])
        assert (await asyncio.wait_for(answer(reader), 10))[0] == b"HTTP/1.1 200 OK"
        step = max(1, len(fourth) // 15)
        for start in range(10, len(fourth), step):
            await asyncio.sleep(0.1)  # 1.5 s in all
            writer.write(fourth[start : start + step])
        assert await asyncio.wait_for(answer(reader), 10) == (
            b"HTTP/1.1 200 OK",
            b'{"received":true}',
        )
    finally:
        writer.close()
    records = by_event_id(await read_all(settings.kafka_bootstrap, settings.topic))
    assert [records[event["id"]].value for event in events] == [first, second]


def refusals(metrics: str) -> dict[str, float]:
    """The receiver's counts of requests refused before their head was whole."""
    pattern = re.compile(
        r'^lattice_webhook_deliveries_total\{endpoint="unknown",event_type="",'
        r'outcome="(head_timeout|request_head_too_large)"\} (\S+)$',
        re.MULTILINE,
    )
    return {outcome: float(count) for outcome, count in pattern.findall(metrics)}


async def test_a_content_length_with_thousands_of_leading_zeros_is_read_as_its_value(
    served: tuple[str, dict[str, str]], settings: Settings
) -> None:
    """HTTP allows leading zeros in Content-Length and the server passes them on: past
    4,300 digits int() refused the value, and the request ended in a 500 and a traceback
    before its body was read. Padded, a delivery's own length is accepted and an
    oversize one refused, as unpadded."""
    url, _ = served
    port = int(url.rsplit(":", 1)[1])
    event = subscription_event(1)
    body = encode(event)
    padding = "0" * 5000
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(delivery_head(body, length=f"{padding}{len(body)}") + body)
        assert await asyncio.wait_for(answer(reader), 10) == (
            b"HTTP/1.1 200 OK",
            b'{"received":true}',
        )
        oversize = f"{padding}{settings.max_body_bytes + 1}"
        writer.write(delivery_head(body, length=oversize))
        status, error = await asyncio.wait_for(answer(reader), 10)
        assert status == b"HTTP/1.1 413 Request Entity Too Large"
        assert orjson.loads(error)["error"] == "too_large"
    finally:
        writer.close()
    stored = await read_all(settings.kafka_bootstrap, settings.topic)
    ours = [r.value for r in stored if r.headers["stripe-event-id"] == event["id"].encode()]
    assert ours == [body]


async def test_a_connection_is_bounded_before_and_after_the_app(
    settings: Settings, tmp_path: Path
) -> None:
    """A client cannot hold a connection by sending nothing, half a head, or a head of
    megabytes; and a refusal that leaves the body unread closes the connection, so a
    client that rightly kept its body back after `Expect: 100-continue` does not have its
    next request read as that body."""
    # 2 s for a head: a busy machine's stall must not make it lapse in the 0.2 s between
    # two pieces of one.
    async with serving(settings, tmp_path, LATTICE_BODY_TIMEOUT="2") as (url, _):
        port = int(url.rsplit(":", 1)[1])

        async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await asyncio.open_connection("127.0.0.1", port)

        async def rest(reader: asyncio.StreamReader) -> bytes:
            """Everything until the server closes (a bounded wait, far above 2 s)."""
            return await asyncio.wait_for(reader.read(), 10)

        silent, silent_w = await connect()
        half, half_w = await connect()
        half_w.write(b"POST /webhooks/platform HTTP/1.1\r\nHost: lattice\r\n")
        huge, huge_w = await connect()
        huge_w.write(b"GET /healthz HTTP/1.1\r\nX-Big: ")  # a header that never ends...
        await huge_w.drain()
        whole, whole_w = await connect()  # a complete head, likely read in one piece
        whole_w.write(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"y" * 2 * MAX_HEAD_BYTES + b"\r\n\r\n")
        refused, refused_w = await connect()
        body = encode(subscription_event(3))
        refused_w.write(
            b"POST /webhooks/platform HTTP/1.1\r\nHost: lattice\r\n"
            b"Content-Length: 2000000\r\nExpect: 100-continue\r\n\r\n"
        )
        await asyncio.sleep(0.2)
        huge_w.write(b"x" * (MAX_HEAD_BYTES + 1))  # ...arriving after its first bytes
        try:
            assert await rest(silent) == b""  # nothing asked, nothing answered: closed
            assert (await rest(half)).startswith(b"HTTP/1.1 408 Request Timeout\r\n")
            assert (await rest(huge)).startswith(b"HTTP/1.1 431 Request Header Fields")
            assert (await rest(whole)).startswith(b"HTTP/1.1 431 Request Header Fields")
            status, _ = await asyncio.wait_for(answer(refused), 10)
            assert status == b"HTTP/1.1 413 Request Entity Too Large"
            # The next delivery on that connection is never taken for the refused body.
            refused_w.write(delivery_head(body) + body)
            assert await rest(refused) == b""
        finally:
            for writer in (silent_w, half_w, huge_w, whole_w, refused_w):
                writer.close()
        # A big delivery's body and, in the same write, half of the next (pipelined)
        # request's head: only head bytes count toward the head's limit, and the
        # delivery's 200 is not lost to a refusal of the next request.
        reader, writer = await connect()
        try:
            padded = body + b" " * 100_000  # still a Stripe event: JSON allows the spaces
            writer.write(delivery_head(padded) + padded + b"GET /healthz HTTP/1.1\r\n")
            await writer.drain()
            await asyncio.sleep(0.2)  # a separate read for the rest of the head
            writer.write(b"Host: lattice\r\n\r\n")
            delivered = await asyncio.wait_for(answer(reader), 10)
            assert delivered == (b"HTTP/1.1 200 OK", b'{"received":true}')
            assert (await asyncio.wait_for(answer(reader), 10))[0] == b"HTTP/1.1 200 OK"
            # The head timer lapses between requests; a later oversize head sent in one
            # piece, ended by a separate read, is still refused.
            await asyncio.sleep(2.5)
            writer.write(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"z" * 3 * MAX_HEAD_BYTES)
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.write(b"\r\n\r\n")
            assert (await rest(reader)).startswith(b"HTTP/1.1 431 Request Header Fields")
        finally:
            writer.close()
        # Refused before the app saw them, yet counted and logged like every answer.
        async with httpx.AsyncClient() as client:
            scraped = (await client.get(f"{url}/metrics")).text
        assert refusals(scraped) == {"head_timeout": 1.0, "request_head_too_large": 3.0}
        # Without `Expect`, the client sends its oversize body at once: it reads its 413
        # (the connection is not reset under it) and the connection serves the next one.
        reader, writer = await connect()
        try:
            big = b"x" * 1_500_000
            writer.write(delivery_head(big) + big)
            status, _ = await asyncio.wait_for(answer(reader), 10)
            assert status == b"HTTP/1.1 413 Request Entity Too Large"
            writer.write(delivery_head(body) + body)
            assert await asyncio.wait_for(answer(reader), 10) == (
                b"HTTP/1.1 200 OK",
                b'{"received":true}',
            )
        finally:
            writer.close()
    log = (tmp_path / "serve.log").read_bytes().splitlines()
    logged = [orjson.loads(line) for line in log if line.startswith(b"{")]
    unknown = sorted(
        (line["status"], line["outcome"])
        for line in logged
        if line.get("event") == "webhook" and line.get("endpoint") == "unknown"
    )
    assert unknown == [(408, "head_timeout")] + [(431, "request_head_too_large")] * 3


async def test_a_connection_is_bounded_after_its_answer_too(
    settings: Settings, tmp_path: Path
) -> None:
    """Answered before its body was read (an unknown endpoint), a client trickling the rest
    is cut off; one answered, then sending empty lines (which begin no request and restart
    uvicorn's keep-alive timer), is too. A client told `404` while it waits for `100
    Continue` is closed at once. And a delivery whose head began in an earlier read, sent
    with the start of a pipelined request in one read, is answered 200 (its body is not
    counted as the next request's head)."""
    # 2 s, as above: long enough for a busy machine between two pieces of one head.
    async with serving(settings, tmp_path, LATTICE_BODY_TIMEOUT="2") as (url, _):
        port = int(url.rsplit(":", 1)[1])
        unknown, unknown_w = await asyncio.open_connection("127.0.0.1", port)
        idle, idle_w = await asyncio.open_connection("127.0.0.1", port)
        waiting, waiting_w = await asyncio.open_connection("127.0.0.1", port)
        writers = (unknown_w, idle_w, waiting_w)

        async def trickle(writer: asyncio.StreamWriter, data: bytes) -> None:
            """One piece every 0.2 s, for as long as the server reads (bounded: 15 s)."""
            for _ in range(75):
                await asyncio.sleep(0.2)
                if writer.is_closing():
                    return
                writer.write(data)
                try:
                    await writer.drain()
                except ConnectionError:
                    return

        try:
            unknown_w.write(
                b"POST /webhooks/nope HTTP/1.1\r\nHost: lattice\r\nContent-Length: 1000000\r\n\r\n"
            )
            assert (await asyncio.wait_for(answer(unknown), 10))[0] == b"HTTP/1.1 404 Not Found"
            idle_w.write(b"GET /healthz HTTP/1.1\r\nHost: lattice\r\n\r\n")
            assert (await asyncio.wait_for(answer(idle), 10))[0] == b"HTTP/1.1 200 OK"
            waiting_w.write(
                b"POST /webhooks/platform/ HTTP/1.1\r\nHost: lattice\r\nContent-Length: 40\r\n"
                b"Expect: 100-continue\r\n\r\n"
            )
            trickles = [
                asyncio.create_task(trickle(unknown_w, b"x")),
                asyncio.create_task(trickle(idle_w, b"\r\n")),
            ]
            closed = await asyncio.gather(
                asyncio.wait_for(unknown.read(), 12),
                asyncio.wait_for(idle.read(), 12),
                asyncio.wait_for(waiting.read(), 12),
            )
            await asyncio.gather(*trickles)
        finally:
            for writer in writers:
                writer.close()
        assert [closed[0], closed[1]] == [b"", b""]
        head, _, _ = closed[2].partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 404 Not Found")
        assert b"connection: close" in head.lower()

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            body = encode(subscription_event(4))
            padded = body + b" " * (MAX_HEAD_BYTES + 10_000)  # JSON allows the spaces
            head = delivery_head(padded)
            writer.write(head[:40])  # the delivery's head begins in a read of its own
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.write(head[40:] + padded + b"GET /healthz HTTP/1.1\r\nHost: lattice\r\n")
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.write(b"\r\n")
            delivered = await asyncio.wait_for(answer(reader), 10)
            assert delivered == (b"HTTP/1.1 200 OK", b'{"received":true}')
            assert (await asyncio.wait_for(answer(reader), 10))[0] == b"HTTP/1.1 200 OK"
        finally:
            writer.close()
