"""A load generator that delivers webhooks the way Stripe does.

Each attempt is signed afresh (Stripe signs every attempt with its own timestamp); a 503
or a connection error is retried after a short pause until a 200 arrives, so a delivery
is lost only if the receiver said 200 and the log does not have it. Every answer is
counted, so a scenario can assert what the receiver said while its fault was on.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
import orjson

from ingest.signature import sign_header

RETRY_PAUSE = 0.2  # Stripe waits minutes; a test compresses time, the order stays the same


@dataclass(frozen=True)
class Delivery:
    """One webhook: its event id, the endpoint it goes to and its body."""

    event_id: str
    endpoint: str
    body: bytes


@dataclass
class LoadReport:
    """What the receiver answered, attempt by attempt."""

    accepted: Counter[str] = field(default_factory=Counter)  # event id -> 200s received
    statuses: Counter[int] = field(default_factory=Counter)
    connection_errors: int = 0  # every transport error, refused connections included
    cut_off: int = 0  # of those, requests that had reached a server and lost it mid-way
    unavailable_without_retry_after: int = 0
    refused: list[tuple[str, int, str]] = field(default_factory=list)  # 4xx: never expected
    latencies: list[float] = field(default_factory=list)  # seconds, 200s only

    @property
    def attempts(self) -> int:
        return self.statuses.total() + self.connection_errors


def deliveries(bodies: Sequence[bytes], endpoint: str = "platform") -> list[Delivery]:
    """Deliveries for event bodies (the event id read from each)."""
    return [Delivery(str(orjson.loads(b)["id"]), endpoint, b) for b in bodies]


class LoadGenerator:
    """Delivers to one receiver address with bounded concurrency and an optional rate."""

    def __init__(
        self,
        base_url: str,
        secrets: dict[str, str],
        *,
        concurrency: int = 16,
        rate: float | None = None,
        request_timeout: float = 10.0,
    ) -> None:
        self.base_url = base_url
        self.secrets = secrets
        self.concurrency = concurrency
        self.rate = rate
        self.request_timeout = request_timeout
        self.report = LoadReport()

    async def run(self, items: Sequence[Delivery], *, deadline: float = 120.0) -> LoadReport:
        """Deliver every item until each got a 200 (or a 4xx, recorded as refused)."""
        queue: asyncio.Queue[Delivery] = asyncio.Queue()
        for item in items:
            queue.put_nowait(item)
        until = time.monotonic() + deadline
        started = time.monotonic()
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(
            base_url=self.base_url, timeout=self.request_timeout, limits=limits
        ) as client:
            tickets = itertools.count()

            async def worker() -> None:
                while not queue.empty():
                    item = queue.get_nowait()
                    if self.rate is not None:
                        # Paced: the n-th first attempt leaves at n / rate seconds.
                        due = started + next(tickets) / self.rate
                        await asyncio.sleep(max(0.0, due - time.monotonic()))
                    await self._deliver(client, item, until)

            await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        return self.report

    async def _deliver(self, client: httpx.AsyncClient, item: Delivery, until: float) -> None:
        while True:
            if time.monotonic() > until:
                raise AssertionError(f"{item.event_id} was not accepted before the deadline")
            header = sign_header(item.body, self.secrets[item.endpoint], int(time.time()))
            began = time.perf_counter()
            try:
                answer = await client.post(
                    f"/webhooks/{item.endpoint}",
                    content=item.body,
                    headers={"Stripe-Signature": header, "Content-Type": "application/json"},
                )
            except httpx.TransportError as exc:
                self.report.connection_errors += 1
                # Refused (nobody listening, e.g. while a receiver restarts) or timed out
                # connecting is not a request cut off mid-way.
                if not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                    self.report.cut_off += 1
                await asyncio.sleep(RETRY_PAUSE)
                continue
            self.report.statuses[answer.status_code] += 1
            if answer.status_code == 200:
                self.report.latencies.append(time.perf_counter() - began)
                self.report.accepted[item.event_id] += 1
                return
            if answer.status_code == 503:
                if "retry-after" not in answer.headers:
                    self.report.unavailable_without_retry_after += 1
                await asyncio.sleep(RETRY_PAUSE)
                continue
            self.report.refused.append((item.event_id, answer.status_code, answer.text[:200]))
            return
