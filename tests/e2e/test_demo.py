"""`make demo`, the front door: it runs to its checked report, and runs again from the
shell its last lines tell a newcomer to set up (which names the demo's own database)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from deploy.settings import load_settings
from tests.conftest import Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _demo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["deploy/demo.sh", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _sourced(path: Path) -> dict[str, str]:
    """What `. path` exports (the lines `write_env` writes)."""
    values = {}
    for line in path.read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        values[name] = shlex.split(value)[0]
    return values


def test_the_demo_runs_again_from_the_shell_it_suggests(stack: Stack) -> None:
    home = load_settings().home
    env = {**os.environ, "DEMO_CUSTOMERS": "20", "DEMO_ACCOUNTS": "2"}
    try:
        first = _demo(env)
        assert first.returncode == 0, first.stderr[-3000:]
        assert "Traceback" not in first.stderr
        assert "[ok]" in first.stdout + first.stderr
        demo_shell = {**env, **_sourced(home / "stack.env"), **_sourced(home / "demo" / "env")}
        assert demo_shell["LATTICE_DATABASE_URL"].endswith("/lattice_demo")
        # The command its last lines suggest, with the example event it wrote.
        url = f"http://127.0.0.1:{demo_shell['DEMO_RECEIVER_PORT']}"
        example = home / "demo" / "event.json"
        send = ["send", str(example), "--endpoint", "platform", "--url", url]
        sent = subprocess.run(
            [sys.executable, "-m", "deploy.cli", *send],
            cwd=REPO,
            env=demo_shell,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert '{"received":true}' in sent.stdout
        assert orjson.loads(example.read_bytes())["type"] == "customer.created"

        again = _demo(demo_shell)

        assert again.returncode == 0, again.stderr[-3000:]
        assert "Traceback" not in again.stderr
        assert "[ok]" in again.stdout + again.stderr
        # The stack's own file still names the stack's database, not the demo's.
        assert _sourced(home / "stack.env")["LATTICE_DATABASE_URL"] == stack.database_url
    finally:
        _demo(env, "stop")
