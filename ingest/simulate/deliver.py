"""Delivering a simulation: signed HTTP posts like Stripe's, usage facts on Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import httpx
from aiokafka import AIOKafkaProducer

from deploy import kafka_options
from ingest.simulate.generator import BROKEN, FORGED, Delivery

FORGED_SECRET = "whsec_not_configured_anywhere"
MAX_ATTEMPTS = 8  # Stripe retries for days; the simulator gives up sooner


class DeliveryFailed(Exception):
    """A delivery was refused for good (not a forged one): the receiver is misconfigured."""


def sign(body: bytes, secrets: Sequence[str], timestamp: int) -> str:
    """The `Stripe-Signature` header: one `v1` per secret, as during a rotation."""
    signed = f"{timestamp}.".encode() + body
    parts = [f"t={timestamp}"]
    parts += [f"v1={hmac.new(s.encode(), signed, hashlib.sha256).hexdigest()}" for s in secrets]
    return ",".join(parts)


@dataclass
class Outcome:
    """What the receiver answered, counted by kind of delivery and status."""

    statuses: Counter[str] = field(default_factory=Counter)
    accepted: int = 0
    rejected: int = 0
    broken_off: int = 0
    retried: int = 0

    def line(self) -> str:
        """One line for the terminal."""
        return (
            f"accepted {self.accepted}, rejected {self.rejected} (forged), "
            f"broken off and retried {self.broken_off}, retries after 5xx {self.retried}"
        )


class _BreakOff(Exception):
    """Raised inside a request body to drop the connection mid-body."""


async def _half_then_break(body: bytes) -> AsyncIterator[bytes]:
    yield body[: len(body) // 2]
    raise _BreakOff


class Progress:
    """A progress bar on stderr (a line every 10% when stderr is not a terminal)."""

    def __init__(self, total: int, what: str) -> None:
        self.total, self.what, self.done = total, what, 0
        self.started = time.monotonic()
        self._last_shown = -1.0
        self._tty = sys.stderr.isatty()

    def advance(self, count: int = 1) -> None:
        """Count `count` more done, and redraw now and then."""
        self.done += count
        now = time.monotonic()
        step = self.done * 10 // max(self.total, 1)
        if self._tty and (now - self._last_shown > 0.1 or self.done == self.total):
            self._last_shown = now
            self._draw(now)
        elif not self._tty and (step > self._last_shown or self.done == self.total):
            self._last_shown = step
            self._draw(now)

    def _draw(self, now: float) -> None:
        width = 30
        filled = width * self.done // max(self.total, 1)
        rate = self.done / max(now - self.started, 1e-6)
        text = (
            f"{self.what} [{'#' * filled}{'.' * (width - filled)}] "
            f"{self.done}/{self.total} {rate:,.0f}/s"
        )
        end = "\n" if self.done >= self.total or not self._tty else ""
        sys.stderr.write(("\r" if self._tty else "") + text + end)
        sys.stderr.flush()


async def deliver(
    deliveries: Sequence[Delivery],
    *,
    url: str,
    secrets: Mapping[str, Sequence[str]],
    rate: float | None = None,
    concurrency: int = 8,
    clock: Callable[[], float] = time.time,
    progress: Progress | None = None,
) -> Outcome:
    """POST every delivery to `{url}/webhooks/{endpoint}` in order, `concurrency` at a time."""
    missing = sorted({d.endpoint for d in deliveries} - set(secrets))
    if missing:
        raise DeliveryFailed(
            f"no signing secret for endpoint(s) {', '.join(missing)}: set "
            "LATTICE_WEBHOOK_SECRETS, e.g. platform=whsec_a,connect=whsec_b"
        )
    outcome = Outcome()
    queue: asyncio.Queue[tuple[int, Delivery]] = asyncio.Queue()
    for pair in enumerate(deliveries):
        queue.put_nowait(pair)
    started = time.monotonic()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=30.0, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                index, delivery = queue.get_nowait()
                if rate:
                    await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))
                await _one(client, delivery, secrets, outcome, clock)
                if progress is not None:
                    progress.advance()

        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    return outcome


async def _one(
    client: httpx.AsyncClient,
    delivery: Delivery,
    secrets: Mapping[str, Sequence[str]],
    outcome: Outcome,
    clock: Callable[[], float],
) -> None:
    path = f"/webhooks/{delivery.endpoint}"
    keys = [FORGED_SECRET] if delivery.kind == FORGED else list(secrets[delivery.endpoint])
    if delivery.kind == BROKEN:
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Content-Length": str(len(delivery.body)),
            "Stripe-Signature": sign(delivery.body, keys, int(clock())),
        }
        # The point: the connection drops mid-body; Stripe's retry comes later.
        with contextlib.suppress(_BreakOff, httpx.HTTPError):
            await client.post(path, content=_half_then_break(delivery.body), headers=headers)
        outcome.broken_off += 1
        return
    delay = 0.2
    for _attempt in range(MAX_ATTEMPTS):
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Stripe-Signature": sign(delivery.body, keys, int(clock())),
        }
        try:
            response = await client.post(path, content=delivery.body, headers=headers)
        except httpx.TransportError:
            status = "connection error"
        else:
            status = str(response.status_code)
            if response.status_code < 500 and response.status_code != 429:
                outcome.statuses[status] += 1
                if response.status_code == 200:
                    outcome.accepted += 1
                    return
                if delivery.kind == FORGED:
                    outcome.rejected += 1
                    return
                raise DeliveryFailed(
                    f"POST {path} for {delivery.event_id} answered "
                    f"{response.status_code}: {response.text[:200]}"
                )
        outcome.retried += 1
        outcome.statuses[status] += 1
        await asyncio.sleep(delay)  # Stripe backs off exponentially; so do we, briefly
        delay = min(delay * 2, 5.0)
    raise DeliveryFailed(
        f"POST {path} for {delivery.event_id} kept failing ({status}); "
        "is `lattice serve` running and the broker up?"
    )


async def produce_facts(
    facts: Sequence[tuple[bytes, bytes]],
    *,
    bootstrap: str,
    topic: str,
    progress: Progress | None = None,
) -> int:
    """Produce the usage facts to `topic` (idempotent, acks=all); return how many."""
    producer = AIOKafkaProducer(
        **kafka_options.options(),
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, value=value, key=key) for key, value in facts]
        for future in futures:
            await future
            if progress is not None:
                progress.advance()
    finally:
        await producer.stop()
    return len(facts)
