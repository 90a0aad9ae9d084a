"""`lattice serve` over real HTTP (two uvicorn workers) and `lattice send` against it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from deploy.settings import Settings
from tests.integration.test_receiver import PLATFORM_NEW, PLATFORM_OLD, encode, subscription_event
from tests.support.kafka import read_all
from tests.support.ports import free_port
from tests.support.wait import eventually

pytestmark = pytest.mark.integration

LATTICE = [sys.executable, "-m", "deploy.cli"]


async def start_serve(
    settings: Settings,
    port: int,
    log: Path,
    secrets: str = f"platform={PLATFORM_NEW}",
    **extra: str,
) -> tuple[asyncio.subprocess.Process, dict[str, str]]:
    """`lattice serve --workers 2` on `port` and the test's topic (`extra`: more LATTICE_*
    variables); the process and its env."""
    env = {
        **os.environ,
        "LATTICE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "LATTICE_WEBHOOK_SECRETS": secrets,
        **extra,
    }
    with log.open("wb") as sink:
        server = await asyncio.create_subprocess_exec(
            *[*LATTICE, "serve", "--port", str(port), "--workers", "2", "--topic", settings.topic],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    return server, env


@pytest.fixture
async def served(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """`lattice serve --workers 2` on a free port; yields its URL and environment."""
    async with serving(settings, tmp_path) as running:
        yield running


@asynccontextmanager
async def serving(
    settings: Settings, tmp_path: Path, **extra: str
) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """`lattice serve --workers 2` on a free port, ready; its URL and environment."""
    port = free_port()
    secrets = f"platform={PLATFORM_OLD},platform={PLATFORM_NEW}"
    server, env = await start_serve(settings, port, tmp_path / "serve.log", secrets, **extra)
    url = f"http://127.0.0.1:{port}"

    async def ready() -> int:
        try:
            async with httpx.AsyncClient() as client:
                return (await client.get(f"{url}/readyz")).status_code
        except httpx.HTTPError:
            return 0

    try:
        await eventually(ready, lambda code: code == 200, what="lattice serve ready")
        yield url, env
    finally:
        server.send_signal(signal.SIGTERM)
        await asyncio.wait_for(server.wait(), 30)


async def send(env: dict[str, str], *args: str, stdin: bytes | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *LATTICE,
        "send",
        *args,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out, _ = await process.communicate(stdin)
    return int(process.returncode or 0), out.decode()


async def test_send_signs_like_stripe_and_serve_appends(
    served: tuple[str, dict[str, str]], settings: Settings, tmp_path: Path
) -> None:
    url, env = served
    event = subscription_event(1)
    event_file = tmp_path / "event.json"
    event_file.write_bytes(encode(event))

    code, out = await send(env, str(event_file), "--endpoint", "platform", "--url", url)
    assert (code, out.splitlines()[0]) == (0, "200 OK"), out
    assert json.loads(out.splitlines()[1]) == {"received": True}

    wrong = ["-", "--endpoint", "platform", "--url", url, "--secret", "whsec_wrong"]
    code, out = await send(env, *wrong, stdin=encode(subscription_event(2)))
    assert code == 1
    assert "400 Bad Request" in out
    assert "bad_signature" in out

    # The name is one path segment, whatever it holds (unquoted, `#` would end the path).
    named = ["--endpoint", "plat#form", "--secret", "whsec_any", "--url", url]
    code, out = await send(env, str(event_file), *named)
    assert code == 1
    assert "404 Not Found" in out
    assert "no webhook endpoint named 'plat#form'" in out

    # Over real sockets the oversize body is refused from its Content-Length.
    async with httpx.AsyncClient() as client:
        answer = await client.post(f"{url}/webhooks/platform", content=b"{" * (1024 * 1024 + 1))
    assert answer.status_code == 413
    assert "server" not in answer.headers  # `lattice serve` does not name its server

    records = await read_all(settings.kafka_bootstrap, settings.topic)
    assert [r.value for r in records] == [encode(event)]
