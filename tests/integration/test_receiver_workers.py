"""`lattice serve --workers N`: each worker accepts on its own socket, and is restarted."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import psutil
import pytest

from deploy.settings import Settings
from tests.integration.test_receiver import PLATFORM_NEW, encode, signed, subscription_event
from tests.integration.test_receiver_cli import LATTICE, start_serve
from tests.support.ports import free_port
from tests.support.wait import eventually

pytestmark = pytest.mark.integration

CONNECTIONS = 32
DELIVERIES = 12
SCRAPES = 8


def listening_workers(parent: psutil.Process, port: int) -> list[psutil.Process]:
    """The children of `parent` that have a socket listening on `port`."""
    found = []
    for child in parent.children():
        try:
            sockets = child.net_connections("tcp")
        except psutil.NoSuchProcess:  # a worker just killed, not yet replaced
            continue
        if [c for c in sockets if c.status == psutil.CONN_LISTEN and c.laddr.port == port]:
            found.append(child)
    return found


def established_on(process: psutil.Process, port: int) -> int:
    return sum(
        1
        for c in process.net_connections("tcp")
        if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port
    )


async def get_healthz(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """One keep-alive connection that has had one answer (left open)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: lattice\r\n\r\n")
    status = await reader.readline()
    return reader, writer, status


@dataclass
class Supervised:
    """A running `lattice serve --workers 2` whose two workers listen."""

    server: asyncio.subprocess.Process
    parent: psutil.Process
    port: int
    log: Path
    workers: list[psutil.Process]

    async def listening(self) -> list[psutil.Process]:
        return listening_workers(self.parent, self.port)


@pytest.fixture
async def supervised(settings: Settings, tmp_path: Path) -> AsyncIterator[Supervised]:
    port = free_port()
    log = tmp_path / "serve.log"
    server, _ = await start_serve(settings, port, log)
    running = Supervised(server, psutil.Process(server.pid), port, log, [])
    try:
        running.workers = await eventually(
            running.listening, lambda found: len(found) == 2, what="workers"
        )
        yield running
    finally:
        if server.returncode is None:
            server.send_signal(signal.SIGTERM)
            await asyncio.wait_for(server.wait(), 30)


def gone(processes: list[psutil.Process]) -> bool:
    def running(process: psutil.Process) -> bool:
        try:
            return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    return not [p for p in processes if running(p)]


async def test_workers_listen_apart_share_connections_and_come_back(
    supervised: Supervised,
) -> None:
    parent, port, workers = supervised.parent, supervised.port, supervised.workers
    # Each worker has a listening socket of its own; the supervisor has none.
    assert not [c for c in parent.net_connections("tcp") if c.status == psutil.CONN_LISTEN]

    # Connections opened at once spread over both workers (uvicorn's shared socket
    # can leave one worker with most of them).
    opened = await asyncio.gather(*(get_healthz(port) for _ in range(CONNECTIONS)))
    assert {status for _, _, status in opened} == {b"HTTP/1.1 200 OK\r\n"}
    spread = [established_on(worker, port) for worker in workers]
    for _, writer, _ in opened:
        writer.close()
    assert sum(spread) == CONNECTIONS
    assert min(spread) > 0, spread

    # A worker that dies is replaced, and the replacement listens and answers.
    os.kill(workers[0].pid, signal.SIGKILL)
    replaced = await eventually(
        supervised.listening,
        lambda found: len(found) == 2 and workers[0].pid not in {p.pid for p in found},
        what="a replacement worker",
        timeout=30,
    )
    assert workers[1].pid in {p.pid for p in replaced}
    again = await asyncio.gather(*(get_healthz(port) for _ in range(8)))
    assert {status for _, _, status in again} == {b"HTTP/1.1 200 OK\r\n"}
    for _, writer, _ in again:
        writer.close()

    # SIGTERM stops the workers gracefully and the supervisor exits cleanly after them.
    supervised.server.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(supervised.server.wait(), 30)
    assert code == 0, supervised.log.read_text()
    assert gone(workers + replaced)


async def test_a_stop_sent_to_every_process_at_once_is_a_stop_not_a_death(
    supervised: Supervised,
) -> None:
    # As Ctrl-C, systemd or Kubernetes do: the supervisor and the workers all get SIGTERM.
    for process in [supervised.parent, *supervised.workers]:
        process.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(supervised.server.wait(), 30)
    output = supervised.log.read_text()
    assert code == 0, output
    assert "workers_stopped" in output
    assert "worker_died" not in output  # it was not restarted, nor reported as a crash
    assert gone(supervised.workers)
    # Supervisor, workers and uvicorn's own lines: JSON lines, every one.
    lines = [orjson.loads(line) for line in output.splitlines()]
    assert {"Application startup complete.", "Finished server process"} <= {
        str(line["event"]).split(" [")[0] for line in lines
    }


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_taken_port_is_a_clear_error_before_any_worker_starts(
    settings: Settings, workers: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await asyncio.to_thread(
            subprocess.run,
            [*LATTICE, "serve", "--port", str(port), "--workers", workers],
            env={**os.environ, "LATTICE_WEBHOOK_SECRETS": f"platform={PLATFORM_NEW}"},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"lattice: cannot listen on 127.0.0.1:{port}:")
    ), result.stderr


async def test_workers_do_not_outlive_a_killed_supervisor(supervised: Supervised) -> None:
    supervised.server.kill()  # SIGKILL: the supervisor cannot pass anything on
    await supervised.server.wait()

    async def outlived() -> bool:
        return gone(supervised.workers)

    await eventually(outlived, what="workers gone", timeout=30)
    # Nothing holds the port any more: a new `lattice serve` could bind it.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", supervised.port))


def broken_app() -> None:
    """An app factory that fails as a worker builds it (the parent never calls it)."""
    raise RuntimeError("this app cannot be built")


async def test_workers_that_cannot_start_stop_the_command() -> None:
    # Whatever the failure (here an exception, exit status 1, not uvicorn's 3), workers
    # that never serve are not restarted for ever: the command ends, saying so.
    serve = (
        "import sys; from ingest.workers import serve; "
        f"sys.exit(serve('{__name__}:broken_app', host='127.0.0.1', port={free_port()}, "
        "workers=2))"
    )
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", serve],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr  # structlog unconfigured: its lines go to stdout
    assert result.returncode == 1, output
    assert "worker_failed_to_start" in output
    assert "this app cannot be built" in output


async def test_metrics_from_any_worker_count_every_workers_deliveries(
    supervised: Supervised,
) -> None:
    url = f"http://127.0.0.1:{supervised.port}"
    events = [subscription_event(n) for n in range(DELIVERIES)]
    # A fresh connection each, so the kernel spreads them over both workers.
    for event in events:
        body = encode(event)
        async with httpx.AsyncClient() as client:
            answer = await client.post(
                f"{url}/webhooks/platform", content=body, headers=signed(body, PLATFORM_NEW)
            )
        assert answer.status_code == 200
    accepted = re.compile(
        r'^lattice_webhook_deliveries_total\{endpoint="platform",'
        r'event_type="customer\.subscription\.updated",outcome="accepted"\} (\S+)$',
        re.MULTILINE,
    )
    seen = set()
    for _ in range(SCRAPES):  # whichever worker answers, the count is the whole
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"{url}/metrics")).text
        found = accepted.search(text)
        assert found, text
        seen.add(float(found.group(1)))
    assert seen == {float(DELIVERIES)}
