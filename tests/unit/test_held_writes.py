"""`HeldWrites`: a response's head and body leave in one write, in order, never later
than the end of the loop turn."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvloop

from ingest.held_writes import HeldWrites


class Recorded(asyncio.Transport):
    """The far end of the wrapper: keeps each write it is given, as one entry."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False
        self.reset = False  # the peer reset the connection: the transport is closing

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted or self.reset

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000)}.get(name, default)

    def get_write_buffer_size(self) -> int:
        return 0


async def next_turn() -> None:
    await asyncio.sleep(0)


async def test_head_and_body_of_one_turn_go_in_one_write() -> None:
    inner = Recorded()
    held = HeldWrites(inner)
    held.write(b"HTTP/1.1 200 OK\r\ncontent-length: 17\r\n\r\n")
    assert inner.writes == []  # held back, for the body
    assert held.get_write_buffer_size() == 39
    held.write(b'{"received":true}')
    assert inner.writes == [b'HTTP/1.1 200 OK\r\ncontent-length: 17\r\n\r\n{"received":true}']
    await next_turn()
    assert len(inner.writes) == 1  # nothing left to send


async def test_a_lone_write_leaves_at_the_end_of_the_turn_and_order_holds() -> None:
    inner = Recorded()
    held = HeldWrites(inner)
    held.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    await next_turn()
    assert inner.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    for part in (b"a", b"b", b"c"):
        held.write(part)
    await next_turn()
    assert b"".join(inner.writes[1:]) == b"abc"
    assert inner.writes[1:] == [b"ab", b"c"]


async def test_close_sends_what_is_held_and_abort_drops_it() -> None:
    inner = Recorded()
    held = HeldWrites(inner)
    held.write(b"last words")
    held.close()
    assert (inner.writes, inner.closed) == ([b"last words"], True)

    cut = Recorded()
    held = HeldWrites(cut)
    held.write(b"never sent")
    held.abort()
    await next_turn()
    assert (cut.writes, cut.aborted) == ([], True)
    assert held.get_extra_info("peername") == ("127.0.0.1", 50000)


async def test_what_is_held_when_the_peer_resets_is_dropped_not_raised() -> None:
    inner = Recorded()
    held = HeldWrites(inner)
    held.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    inner.reset = True  # connection_lost came first; writing now would raise
    await next_turn()
    assert inner.writes == []


def test_an_answer_written_after_the_connection_closed_is_dropped_under_uvloop() -> None:
    """uvicorn marks only the last request's answer as gone when the client leaves; one
    pipelined before it still writes, after the close. uvloop's transport (the receiver's)
    raises on that write; the wrapper must drop it instead."""

    async def main() -> int:
        ours, theirs = socket.socketpair()
        transport, _ = await asyncio.get_running_loop().create_connection(
            asyncio.Protocol, sock=ours
        )
        held = HeldWrites(transport)
        theirs.close()
        transport.close()
        await asyncio.sleep(0.05)  # closed for good
        held.write(b"HTTP/1.1 200 OK\r\ncontent-length: 17\r\n\r\n")
        held.write(b'{"received":true}')
        held.writelines([b"more"])
        await next_turn()
        return held.get_write_buffer_size()  # nothing held either

    assert uvloop.run(main()) == 0
