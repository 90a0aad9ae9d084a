"""uvicorn's httptools protocol, answering each request with one write instead of two,
and bounding a request's head in time and size.

uvicorn writes a response's head and its body in two writes; `HeldWrites`
(`ingest/held_writes.py`) sends them in one.

Bounds: uvicorn times a connection only between requests (keep-alive), and the body's
deadline starts once the app runs, after the head. So a client could open a connection
and send nothing, or half a head, and hold it (and what it sent) for ever; or send a
header of megabytes. Here a request's head must arrive within `head_timeout` seconds (the
receiver sets it to `LATTICE_BODY_TIMEOUT`) of the connection or of its first byte, else
408 (or, if nothing came, just close); and a head over `MAX_HEAD_BYTES` is answered 431.
Both close the connection, after the answers of any requests pipelined before the refused
one (its bytes are dropped meanwhile). Between requests uvicorn's keep-alive timeout
applies, but each byte restarts it, and empty lines begin no head: a connection that has
not begun its next request that long after its last answer (or `head_timeout`, if longer)
is closed. And after an answer sent before its request's body was all read (404, 405,
413), uvicorn reads and drops the rest for as long as the client sends it: the rest must
end within `LINGER_SECONDS` and `DRAIN_BYTES` (a client that sent its whole body at once
keeps its connection), else the connection is closed. While a body is being read, what
arrives that is not body (a chunked body's trailers, its chunk lines) is bounded too: over
`MAX_HEAD_BYTES` of it in a row and the connection is closed; trailers are dropped, never
added to the request's headers. And writing: uvicorn waits for a client that reads none
of its answers (its buffers full, writing paused) for ever; here, once `head_timeout`
seconds pass without any of what waits being sent, the connection is aborted.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar, Protocol

import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ingest.held_writes import HeldWrites

log = structlog.get_logger("ingest.http")

# Stripe's requests carry a few hundred bytes of head; nginx's default buffers hold 8 KB.
MAX_HEAD_BYTES = 64 * 1024
# After refusing a head: how long, and how much of what the client still sends, is read
# and dropped before the connection closes (so the client can read the answer).
LINGER_SECONDS = 1.0
LINGER_BYTES = 1024 * 1024
# After an answer sent before its request's body ended: how much more of that body is read
# and dropped (within LINGER_SECONDS) to keep the connection for the client's next request.
DRAIN_BYTES = 8 * 1024 * 1024


class Refusals(Protocol):
    """Who hears of a request refused before the app saw it."""

    def refused_head(self, status: int, reason: str, seconds: float) -> None: ...


class HeadRefused(Exception):
    """A refusal answers the request whose head just ended (raised to stop the parser)."""


class OneWriteHttpToolsProtocol(HttpToolsProtocol):
    """`--http httptools`, with each answer's head and body sent in one write, and each
    request's head bounded in time and size."""

    head_timeout = 10.0  # seconds; the receiver's app sets its LATTICE_BODY_TIMEOUT
    # Told of each refusal (status, reason, seconds since the head began): the receiver's
    # app counts and logs it as it does every answer.
    refusals: ClassVar[Refusals | None] = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._writes = HeldWrites(transport)
        super().connection_made(self._writes)
        self._raw_head = self._chunk = self._first_read = self._discarded = 0
        self._reads = self._head_read = 0
        self._discarding = False  # refused: what still arrives is read and dropped
        self._in_body = False  # a request's head is complete, its body is not yet
        self._bodies = 0  # body pieces the parser gave (on_body calls), to see reads without
        self._unframed = 0  # bytes read in a row, in a body, that held no body: trailers
        self._in_head = False  # a request's first byte came, its head is not complete yet
        self._any_request = False
        self._head_began = self._idle_since = self.loop.time()
        self._head_timer: asyncio.TimerHandle | None = None
        self._drain_timer: asyncio.TimerHandle | None = None  # an answered body's rest
        self._drain_left = 0
        self._write_timer: asyncio.TimerHandle | None = None  # writing paused: the client reads
        self._unsent = 0  # bytes waiting to be sent when that timer was set
        # A refusal (status, reason, seconds its head took) waiting for the answers of the
        # requests pipelined before the refused one.
        self._refusal: tuple[bytes, bytes, float] | None = None
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        self._stop_drain()
        self._stop_write_timer()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        # uvicorn waits for the client to read for as long as it takes: bounded here.
        if self._write_timer is None:
            self._arm_write_timer()

    def _arm_write_timer(self) -> None:
        self._unsent = self.transport.get_write_buffer_size()
        self._write_timer = self.loop.call_later(self.head_timeout, self._write_timed_out)

    def resume_writing(self) -> None:
        self._stop_write_timer()
        super().resume_writing()

    def _stop_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_timed_out(self) -> None:
        self._write_timer = None
        unsent = self.transport.get_write_buffer_size()
        if unsent < self._unsent:  # it reads, slowly: another while
            self._arm_write_timer()
            return
        log.warning("connection aborted: its client read too little of its answers in time")
        self._writes.abort()

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None and not self._discarding:
            return  # refused, its answer waiting for those before: dropped
        if self._discarding:
            self._discarded += len(data)
            if self._discarded > LINGER_BYTES:
                self._writes.close_now()
            return
        if self._drain_timer is not None:
            self._drain_left -= len(data)
            if self._drain_left < 0:
                self._linger_then_close()
                return
        self._chunk = len(data)
        self._reads += 1
        in_body, bodies = self._in_body, self._bodies
        super().data_received(data)
        if in_body and self._in_body:
            # A read inside one body: none of it body (chunk lines, trailers) adds up.
            self._unframed = self._unframed + len(data) if bodies == self._bodies else 0
            if self._unframed > MAX_HEAD_BYTES:
                log.warning("connection closed: a body's framing or trailers too long")
                self._writes.close_now()
                return
        # A read after the one the current head began in, with the head still incomplete:
        # all of it was head (a header line reaches `on_header` only once it ends, so count
        # what arrives). The read it began in may also hold the request before (pipelined):
        # not counted here, only bounded in `on_headers_complete`.
        if self._in_head and self._head_read != self._reads:
            self._raw_head += len(data)
            if self._raw_head > MAX_HEAD_BYTES:
                self._refuse(b"431 Request Header Fields Too Large", b"request_head_too_large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = self._any_request = True
        self._head_began = self.loop.time()
        # The read this head began in: its length, a bound on the head's bytes in it.
        self._first_read, self._raw_head, self._head_read = self._chunk, 0, self._reads
        # One timer per connection, not one per request: it is left running across
        # requests and, when it fires, checks how long the current head has taken.
        self._start_head_timer()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:
            super().on_header(name, value)
        # Else a chunked body's trailer: read (and bounded in `data_received`), not kept.

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body, self._unframed = True, 0
        # Exact size only when the reads this head spans could hold one that large (a head
        # may share its reads with a body): the common request pays one comparison.
        later = self._chunk if self._reads != self._head_read else 0  # this read, if another
        spanned = self._first_read + self._raw_head + later
        if spanned > MAX_HEAD_BYTES and self._head_size() > MAX_HEAD_BYTES:
            self._refuse(b"431 Request Header Fields Too Large", b"request_head_too_large")
            raise HeadRefused  # out of the parser, before a request cycle starts
        if self.parser.should_upgrade() and any(
            n == b"transfer-encoding" or (n == b"content-length" and v.strip() != b"0")
            for n, v in self.headers
        ):
            # The parser takes an upgrade's body for the new protocol's bytes and does not
            # read it as a body: what the client sends as the body would be parsed as the
            # next request (smuggled past a proxy that passes `Upgrade` on). Nothing here
            # upgrades: refused. An upgrade without a body is answered as a plain request.
            self._refuse(b"400 Bad Request", b"upgrade_not_supported")
            raise HeadRefused
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._bodies += 1
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        self._stop_drain()  # the answered body's rest came in time: keep the connection
        super().on_message_complete()

    def on_response_complete(self) -> None:
        # The request just answered (not a pipelined one queued behind it: uvicorn's
        # `cycle` is the last one parsed), answered before its body was all received.
        cycle = self.cycle
        unread = cycle is not None and cycle.response_complete and cycle.more_body
        # Never told `100 Continue`, its client holds the body back: what it sends next
        # on this connection would be read as that body.
        held_back = unread and cycle is not None and cycle.waiting_for_100_continue
        super().on_response_complete()
        self._idle_since = self.loop.time()
        if self._refusal is not None:
            if self.cycle is None or self.cycle.response_complete:  # the last one before it
                self._send_refusal(*self._refusal)
            return
        if unread and not self.transport.is_closing():
            if held_back:
                self._linger_then_close()
                return
            self._stop_drain()
            self._drain_left = DRAIN_BYTES
            self._drain_timer = self.loop.call_later(LINGER_SECONDS, self._drain_timed_out)
        self._start_head_timer()

    def _drain_timed_out(self) -> None:
        self._drain_timer = None
        self._linger_then_close()

    def _stop_drain(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _start_head_timer(self, after: float | None = None) -> None:
        if self._head_timer is None:
            delay = self.head_timeout if after is None else after
            self._head_timer = self.loop.call_later(delay, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._in_head:
            left = self._head_began + self.head_timeout - self.loop.time()
            if left > 0:
                self._start_head_timer(left)  # a later request's head, begun since
            else:
                self._refuse(b"408 Request Timeout", b"head_timeout")
        elif not self._any_request:
            self.transport.close()  # nothing asked: nothing to answer
        elif self.cycle is None or self.cycle.response_complete:
            # Between requests: uvicorn's keep-alive timer closes a silent connection, but
            # each byte restarts it; this one is not restarted by empty lines.
            idle = max(self.head_timeout, float(self.timeout_keep_alive))
            left = self._idle_since + idle - self.loop.time()
            if left > 0:
                self._start_head_timer(left)
            else:
                self.transport.close()
        # Else a request is being answered: its answer starts the timer again.

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request it cannot parse. For the `HeadRefused` raised out
        of the parser, a refusal already answers it (or will). For a head that is not
        HTTP, a refusal too, so a request pipelined before it still gets its answer first
        (uvicorn would answer at once and close, taking that answer's place). For the body
        of the request being read (a bad chunk), uvicorn's own, at once."""
        if self._refusal is not None:
            return
        if self._in_head:
            self._refuse(b"400 Bad Request", b"invalid_http_request")
        else:
            super().send_400_response(msg)

    def _refuse(self, status: bytes, reason: bytes) -> None:
        """Refuse the request whose head is being read: at once, or, if a request
        pipelined before it is still being answered, after the last such answer."""
        self._stop_head_timer()
        if self.transport.is_closing() or self._discarding or self._refusal is not None:
            return
        self._refusal = (status, reason, self.loop.time() - self._head_began)
        if self.cycle is None or self.cycle.response_complete:  # the newest request before
            self._send_refusal(*self._refusal)

    def _send_refusal(self, status: bytes, reason: bytes, seconds: float) -> None:
        """Answer the refusal and close, lingering: closed with unread input, a socket
        resets and the client may lose the answer. So send it with our end shut, drop what
        the client still sends for up to `LINGER_SECONDS` or `LINGER_BYTES`, then close."""
        if self.transport.is_closing() or self._discarding:
            return
        body = b'{"error":"' + reason + b'"}'
        self.transport.write(
            b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
        )
        self._linger_then_close()
        if self.refusals is not None:
            # After the answer and its close are arranged: a failure to count or log it
            # must not leave the connection open.
            try:
                self.refusals.refused_head(int(status[:3]), reason.decode(), seconds)
            except Exception:
                log.exception("counting a refused request failed")

    def _linger_then_close(self) -> None:
        """With the answer sent, shut our end, drop what the client still sends for up to
        `LINGER_SECONDS` or `LINGER_BYTES`, then close (closed with unread input, a socket
        resets, and the client may lose the answer)."""
        self._stop_drain()
        self._stop_head_timer()
        if self.transport.is_closing() or self._discarding:
            return
        self._discarding = True
        if self._writes.can_write_eof():
            self._writes.write_eof()
            # uvicorn's own answer to the parser error we may raise next, and its close,
            # would cut the lingering short: dropped.
            self._writes.seal()
            self.loop.call_later(LINGER_SECONDS, self._writes.close_now)
        else:
            self._writes.close_now()
