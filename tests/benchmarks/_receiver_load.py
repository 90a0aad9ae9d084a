"""The load generator of the receiver benchmark: a separate process, raw HTTP/1.1.

asyncio + uvloop on keep-alive connections, every request a distinct signed event
(~1.5 KB, the shape of a `customer.subscription.updated`). Closed loop by default; with
a rate, open loop, latency counted from each request's scheduled time.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import secrets
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

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


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes) -> int:
    """Send one request on a keep-alive connection and read the whole answer; its status."""
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    at = lower.index(b"content-length:") + 15
    await reader.readexactly(int(lower[at : lower.index(b"\r\n", at)]))
    return int(head[9:12])


@dataclass
class Load:
    """What one load run does: closed loop for `seconds`, or open loop at `rate`."""

    port: int
    connections: int
    seconds: float
    warmup: float
    rate: float | None = None


async def drive(load: Load) -> tuple[list[float], int, int, int]:
    """Latencies (s) after warm-up, 200s and other answers after warm-up, all 200s."""
    prefix = secrets.token_hex(4)
    counter = iter(range(10**9))
    latencies: list[float] = []
    failures = accepted = 0
    start = time.perf_counter()
    measure_from, stop_at = start + load.warmup, start + load.warmup + load.seconds
    queue: asyncio.Queue[float] = asyncio.Queue()

    async def connection() -> None:
        nonlocal failures, accepted
        reader, writer = await asyncio.open_connection("127.0.0.1", load.port)
        while True:
            scheduled = await queue.get() if load.rate else time.perf_counter()
            if scheduled >= stop_at:
                break
            status = await exchange(reader, writer, request_bytes(next(counter), prefix))
            accepted += status == 200
            if scheduled >= measure_from:
                latencies.append(time.perf_counter() - scheduled)
                failures += status != 200
        writer.close()

    async def pace(rate: float) -> None:
        for i in range(int((load.warmup + load.seconds) * rate)):
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            queue.put_nowait(due)
        for _ in range(load.connections):
            queue.put_nowait(stop_at)

    tasks = [asyncio.create_task(connection()) for _ in range(load.connections)]
    if load.rate:
        tasks.append(asyncio.create_task(pace(load.rate)))
    await asyncio.gather(*tasks)
    return latencies, len(latencies) - failures, failures, accepted


def _load_process(load: Load, out: Connection) -> None:
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
    result: tuple[list[float], int, int, int] = receive.recv()
    worker.join()
    return result
