"""The load generator of the receiver benchmark: a separate process, raw HTTP/1.1.

asyncio + uvloop protocols on keep-alive connections (no streams: the client runs on the
same 2 cores as the server, so it must cost little per request), every request a
distinct signed event (~1.5 KB, the shape of a `customer.subscription.updated`). Closed
loop by default; with a rate, open loop, latency counted from each request's scheduled
time.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import secrets
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection as PipeEnd
from typing import cast

from ingest.signature import sign_header

SECRET = "whsec_" + "b" * 32
BODY = (
    '{\n  "id": "%s",\n  "object": "event",\n  "api_version": "2025-10-29.clover",\n'
    '  "created": 1764064800,\n  "data": {\n    "object": {\n      "id": "%s",\n'
    '      "object": "subscription",\n      "customer": "cus_QXg1o8vcGmoR32",\n'
    '      "status": "active",\n      "cancel_at_period_end": false,\n'
    '      "collection_method": "charge_automatically",\n      "currency": "usd",\n'
    '      "items": {"object": "list", "data": [{"id": "si_QXg1xyz", "object": '
    '"subscription_item", "current_period_start": 1764000000, "current_period_end": '
    '1766592000, "quantity": 1, "price": {"id": "price_1PgafmB7WZ01zgkW6dKueIc5", '
    '"object": "price", "currency": "usd", "unit_amount": 2000, "recurring": '
    '{"interval": "month", "interval_count": 1, "usage_type": "licensed"}}}]},\n'
    '      "latest_invoice": "in_1Pgc6tB7WZ01zgkWu9fdqL6I",\n      "livemode": false,\n'
    '      "metadata": {"plan": "pro", "seats": "12"}\n    },\n'
    '    "previous_attributes": {"cancel_at_period_end": true}\n  },\n'
    '  "livemode": false,\n  "pending_webhooks": 1,\n'
    '  "request": {"id": null, "idempotency_key": null},\n'
    '  "type": "customer.subscription.updated"\n}'
)


def request_bytes(n: int, prefix: str) -> bytes:
    """One signed POST of a distinct event, as Stripe would send it."""
    body = (BODY % (f"evt_{prefix}{n:09d}", f"sub_{prefix}{n % 5000:06d}")).encode()
    head = (
        "POST /webhooks/platform HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json; charset=utf-8\r\nUser-Agent: Stripe/1.0\r\n"
        f"Stripe-Signature: {sign_header(body, SECRET, int(time.time()))}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class Load:
    """What one load run does: closed loop for `seconds`, or open loop at `rate`."""

    port: int
    connections: int
    seconds: float
    warmup: float
    rate: float | None = None


class Connection(asyncio.Protocol):
    """One keep-alive connection driven from its callbacks: a response that completes
    sends the next request straight away, with no coroutine or stream in between (the
    client shares the server's 2 cores, so its CPU per request is the server's loss)."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.scheduled = 0.0
        self.waiting = False  # a request sent and not answered yet
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def send(self, scheduled: float) -> None:
        """Send the next request, its latency counted from `scheduled`."""
        assert self.transport is not None
        self.scheduled = scheduled
        self.waiting = True
        self.transport.write(self.run.next_request())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].lower()
        at = head.index(b"content-length:") + 15
        stop = head.find(b"\r\n", at)
        total = end + 4 + int(head[at : stop if stop >= 0 else len(head)])
        if len(self.buffer) < total:
            return
        status = int(self.buffer[9:12])
        self.buffer = self.buffer[total:]
        self.waiting = False
        self.run.answered(self, status)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self.run.lost(self)


class Run:
    """What the connections of one load run share: requests, pacing, the tallies."""

    def __init__(self, load: Load) -> None:
        self.load = load
        self.prefix = secrets.token_hex(4)
        self.count = 0
        self.latencies: list[float] = []
        self.failures = self.accepted = 0
        self.start = time.perf_counter()
        self.measure_from = self.start + load.warmup
        self.stop_at = self.measure_from + load.seconds
        self.idle: deque[Connection] = deque()
        self.backlog: deque[float] = deque()
        self.finished = asyncio.get_running_loop().create_future()
        self.open = 0

    def next_request(self) -> bytes:
        self.count += 1
        return request_bytes(self.count, self.prefix)

    def answered(self, connection: Connection, status: int) -> None:
        """Tally one answer, then give the connection its next request (or rest it)."""
        now = time.perf_counter()
        self.accepted += status == 200
        # Latencies of 200s after the warm-up only (a fast refusal must not make the figures
        # look good); a refusal counts whenever it came.
        if status != 200:
            self.failures += 1
        elif connection.scheduled >= self.measure_from:
            self.latencies.append(now - connection.scheduled)
        if self.load.rate is None:
            self.dispatch(connection, now)
        elif self.backlog:
            self.dispatch(connection, self.backlog.popleft())
        else:
            self.idle.append(connection)

    def dispatch(self, connection: Connection, scheduled: float) -> None:
        """Send on `connection`, or close it when the run is over."""
        if scheduled >= self.stop_at:
            assert connection.transport is not None
            connection.transport.close()
        else:
            connection.send(scheduled)

    def lost(self, connection: Connection) -> None:
        """A connection closed (by us at the end, or by the server): the run ends with
        the last one."""
        if connection in self.idle:
            self.idle.remove(connection)
        if connection.waiting:
            self.failures += 1  # the server dropped it with a request unanswered
        self.open -= 1
        if self.open == 0 and not self.finished.done():
            self.finished.set_result(None)

    def due(self, scheduled: float) -> None:
        """Open loop: a request is due now; an idle connection takes it, else it waits."""
        if self.idle:
            self.dispatch(self.idle.popleft(), scheduled)
        else:
            self.backlog.append(scheduled)


async def drive(load: Load) -> tuple[list[float], int, int, int]:
    """Latencies (s) of the 200s after warm-up, their count, the other outcomes (other
    answers, requests dropped or never sent), all 200s."""
    loop = asyncio.get_running_loop()
    run = Run(load)
    connections: list[Connection] = []
    for _ in range(load.connections):
        _, connection = await loop.create_connection(
            lambda: Connection(run), "127.0.0.1", load.port
        )
        connections.append(connection)
    run.open = len(connections)
    run.start = time.perf_counter()
    run.measure_from = run.start + load.warmup
    run.stop_at = run.measure_from + load.seconds
    if load.rate is None:
        for connection in connections:
            run.dispatch(connection, time.perf_counter())
    else:
        run.idle.extend(connections)
        for i in range(int((load.warmup + load.seconds) * load.rate)):
            due = run.start + i / load.rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            run.due(due)
        for _ in range(load.connections):
            run.due(run.stop_at)
    await run.finished
    await asyncio.gather(*(c.closed for c in connections))
    # Scheduled but never sent: every connection was gone (counted, not forgotten).
    run.failures += sum(1 for s in run.backlog if run.measure_from <= s < run.stop_at)
    return run.latencies, len(run.latencies), run.failures, run.accepted


def _load_process(load: Load, out: PipeEnd) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    out.send(asyncio.run(drive(load)))
    out.close()


def run_load(load: Load) -> tuple[list[float], int, int, int]:
    """Run `drive` in a separate process so the client does not share the server's loop."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    worker = ctx.Process(target=_load_process, args=(load, send))
    worker.start()
    send.close()  # ours: so a child that dies is an EOF here, not a wait for ever
    if not receive.poll(load.warmup + load.seconds + 120):
        worker.kill()
        raise RuntimeError("the load process gave no result")
    result: tuple[list[float], int, int, int] = receive.recv()
    worker.join()
    return result
