"""The end-to-end benchmark's load: an open-loop client in its own process.

Every request is a distinct signed event (realistic subscription and invoice bodies,
2-4 KB), sent at its scheduled time on one of a pool of keep-alive connections; the
client records when each was sent (wall clock, to compare with the projector's commits)
and how long the receiver took to answer, counted from the scheduled time so a stall is
never hidden by the client waiting for it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import secrets
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import orjson

from ingest.signature import sign_header
from tests.fixtures import stripe_objects as so
from tests.support.stripe_stream import stream


@dataclass(frozen=True)
class Plan:
    """An open-loop run at `rate` events/s (closed loop, as fast as answers come, when
    `rate` is None) for `seconds` over `connections` connections. `bodies`: "mixed"
    (subscription updates and paid invoices) or "invoice_paid" (each a new invoice)."""

    port: int
    secret: str
    rate: float | None
    seconds: float
    connections: int
    path: str = "/webhooks/platform"
    bodies: str = "mixed"


@dataclass(frozen=True)
class Sent:
    """One request: its event id, when it was scheduled (wall clock), HTTP latency, status."""

    event_id: str
    scheduled_at: float
    answer_s: float
    status: int


def templates(count: int = 400) -> list[dict[str, Any]]:
    """Event shapes to vary: subscription updates and paid invoices (no duplicates)."""
    seen: dict[str, dict[str, Any]] = {}
    for item in stream(count, seed=5, thin_every=10**9):
        seen.setdefault(item.event["id"], item.event)
    return list(seen.values())


def body_for(template: dict[str, Any], event_id: str) -> bytes:
    """A distinct event: the template with a fresh event id."""
    return orjson.dumps({**template, "id": event_id}, option=orjson.OPT_INDENT_2)


def new_invoice_paid(template: dict[str, Any], n: int, prefix: str) -> bytes:
    """`invoice.paid` for a new invoice (~4 KB, indented as Stripe sends it)."""
    invoice = {**template["data"]["object"], "id": f"in_{prefix}{n:012d}"}
    event = {**template, "id": f"evt_e2e{prefix}{n:09d}", "data": {"object": invoice}}
    return orjson.dumps(event, option=orjson.OPT_INDENT_2)


def invoice_template() -> dict[str, Any]:
    """A paid invoice event in the current API shape, with one subscription line."""
    invoice = so.invoice(era="basil", status="paid", subscription="sub_1", customer="cus_1")
    return so.event("invoice.paid", invoice)


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes) -> int:
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    at = lower.index(b"content-length:") + 15
    await reader.readexactly(int(lower[at : lower.index(b"\r\n", at)]))
    return int(head[9:12])


async def drive(plan: Plan) -> list[Sent]:
    """Run the plan; every request's record."""
    prefix = secrets.token_hex(4)
    shapes = templates() if plan.bodies == "mixed" else [invoice_template()]
    queue: asyncio.Queue[tuple[int, float, float] | None] = asyncio.Queue()
    sent: list[Sent] = []
    start = time.perf_counter()
    wall0 = time.time()
    if plan.rate is None:
        return await _closed_loop(plan, shapes, prefix, start, wall0)
    total = int(plan.rate * plan.seconds)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", plan.port)
        while (job := await queue.get()) is not None:
            n, due, due_wall = job
            event_id, body = _event(plan, shapes, n, prefix)
            status = await _exchange(reader, writer, _request(plan, body))
            sent.append(Sent(event_id, due_wall, time.perf_counter() - due, status))
        writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(plan.connections)]
    for n in range(total):
        due = start + n / plan.rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        queue.put_nowait((n, due, wall0 + (due - start)))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return sent


def _event(plan: Plan, shapes: list[dict[str, Any]], n: int, prefix: str) -> tuple[str, bytes]:
    event_id = f"evt_e2e{prefix}{n:09d}"
    if plan.bodies == "invoice_paid":
        return event_id, new_invoice_paid(shapes[0], n, prefix)
    return event_id, body_for(shapes[n % len(shapes)], event_id)


def _request(plan: Plan, body: bytes) -> bytes:
    head = (
        f"POST {plan.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json; charset=utf-8\r\nUser-Agent: Stripe/1.0\r\n"
        f"Stripe-Signature: {sign_header(body, plan.secret, int(time.time()))}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def _closed_loop(
    plan: Plan, shapes: list[dict[str, Any]], prefix: str, start: float, wall0: float
) -> list[Sent]:
    """Each connection sends its next request as soon as the last one is answered."""
    sent: list[Sent] = []
    counter = iter(range(10**9))
    stop_at = start + plan.seconds

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", plan.port)
        while (began := time.perf_counter()) < stop_at:
            event_id, body = _event(plan, shapes, next(counter), prefix)
            status = await _exchange(reader, writer, _request(plan, body))
            sent.append(Sent(event_id, wall0 + began - start, time.perf_counter() - began, status))
        writer.close()

    await asyncio.gather(*(connection() for _ in range(plan.connections)))
    return sent


def _child(plan: Plan, out: Connection) -> None:
    out.send(asyncio.run(drive(plan)))
    out.close()


def start(plan: Plan) -> tuple[Any, Connection]:
    """Start the load process; `finish` collects its records."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    worker = ctx.Process(target=_child, args=(plan, send))
    worker.start()
    return worker, receive


def finish(worker: Any, receive: Connection) -> list[Sent]:
    """Wait for the load process and return what it sent."""
    result: list[Sent] = receive.recv()
    worker.join()
    return result
