"""Oversize bodies, many at once, against a real receiver process: each is refused with 413
and the process's memory stays within a stated bound — the receiver stops reading at the
limit instead of buffering what the client sends (declared or chunked)."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from pathlib import Path

import psutil
import pytest

from deploy.settings import Settings
from tests.faults.services import receiver, wait_http_ready
from tests.support.kafka import read_all
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

LIMIT = 64 * 1024
CONCURRENT = 200
SENT_EACH = 4 * 1024 * 1024  # what each client tries to send: 64 times the limit
SLACK = 48 * 2**20  # interpreter, buffers, Kafka client: what any busy receiver may add
CHUNK = b"x" * 65536


async def _oversize(port: int, chunked: bool) -> int:
    """Send one oversize body (declared, or chunked with no length); the answer's status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    framing = (
        b"Transfer-Encoding: chunked\r\n"
        if chunked
        else f"Content-Length: {SENT_EACH}\r\n".encode()
    )
    writer.write(b"POST /webhooks/platform HTTP/1.1\r\nHost: rx\r\n" + framing + b"\r\n")
    try:
        for _ in range(SENT_EACH // len(CHUNK)):
            piece = b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK) if chunked else CHUNK
            writer.write(piece)
            await writer.drain()
    except ConnectionError:
        pass  # the server answered and closed while we were still sending: what we want
    head = await reader.readuntil(b"\r\n")
    writer.close()
    return int(head.split()[1])


class PeakRss:
    """The highest RSS of a process, sampled every 10 ms on a thread."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
async def test_many_oversize_bodies_get_413_within_a_memory_bound(
    settings: Settings, tmp_path: Path, chunked: bool, cases: Counter[str]
) -> None:
    port = free_port()
    env = {
        "LATTICE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "LATTICE_TOPIC": settings.topic,
        "LATTICE_WEBHOOK_SECRETS": "platform=whsec_bounds",
        "LATTICE_MAX_BODY_BYTES": str(LIMIT),
    }
    rx = receiver(env, tmp_path / "receiver.log", port)
    rx.start()
    try:
        await wait_http_ready(f"http://127.0.0.1:{port}", rx)
        assert rx.proc is not None
        before = psutil.Process(rx.proc.pid).memory_info().rss
        with PeakRss(rx.proc.pid) as rss:
            statuses = await asyncio.gather(*(_oversize(port, chunked) for _ in range(CONCURRENT)))
        cases[f"resource bounds: concurrent oversize ({'chunked' if chunked else 'declared'})"] += (
            CONCURRENT
        )
    finally:
        rx.stop()
    assert Counter(statuses) == {413: CONCURRENT}
    # Bound: at most the limit buffered per concurrent request, plus fixed slack — far
    # below the 800 MiB the clients tried to send.
    bound = CONCURRENT * LIMIT + SLACK
    growth = rss.peak - before
    print(f"peak RSS growth {growth / 2**20:.1f} MiB under {CONCURRENT} oversize bodies")
    assert growth < bound, f"RSS grew {growth / 2**20:.0f} MiB (bound {bound / 2**20:.0f} MiB)"
    assert await read_all(settings.kafka_bootstrap, settings.topic) == []
