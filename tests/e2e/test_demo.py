"""`make demo`, the front door: it runs to its checked report, and runs again from the
shell its last lines tell a newcomer to set up (which names the demo's own database)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from deploy.settings import load_settings
from tests.conftest import Stack
from tests.support.ports import free_port

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


def _pids(demo: Path) -> list[int]:
    """The receiver's and the projectors' pids the demo recorded."""
    return [int((demo / f"{name}.pid").read_text()) for name in ("serve", "project")]


def _alive(pid: int) -> bool:
    """Running: a zombie (ended, not yet reaped by an init that does not reap) is not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _interrupted_while_simulating(
    env: dict[str, str], sig: signal.Signals, *, group: bool
) -> tuple[int, str, float, list[int]]:
    """Run the demo and signal it once it delivers: Ctrl-C is SIGINT to its process group;
    `kill` (or CI giving up) is SIGTERM to the script alone. Its status, what it said on
    stderr, how many seconds it took to end after the signal, and the pids of the
    receiver and projectors it had started."""
    with subprocess.Popen(
        ["deploy/demo.sh"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as demo:
        assert demo.stderr is not None
        said = []
        for line in demo.stderr:
            said.append(line)
            if line.startswith("fake Stripe API on"):  # the month is generated: delivering
                time.sleep(0.5)
                started = _pids(REPO / load_settings().home / "demo")
                sent = time.monotonic()
                if group:
                    os.killpg(demo.pid, sig)
                else:
                    demo.send_signal(sig)
                break
        said.append(demo.stderr.read())
        return demo.wait(timeout=60), "".join(said), time.monotonic() - sent, started


def _ports() -> dict[str, str]:
    """The demo's two ports, from the suite's own (its default 8000, or a port picked
    while other workers' connections take ports, could be taken before it binds)."""
    return {"DEMO_RECEIVER_PORT": str(free_port()), "DEMO_STRIPE_PORT": str(free_port())}


def test_the_demo_runs_again_from_the_shell_it_suggests(stack: Stack) -> None:
    home = load_settings().home
    env = {**os.environ, "DEMO_CUSTOMERS": "20", "DEMO_ACCOUNTS": "2", **_ports()}
    try:
        first = _demo(env)
        assert first.returncode == 0, first.stderr[-3000:]
        assert "Traceback" not in first.stderr
        assert "[ok]" in first.stdout + first.stderr
        demo_shell = {**env, **_sourced(home / "stack.env"), **_sourced(home / "demo" / "env")}
        assert demo_shell["LATTICE_DATABASE_URL"].endswith("/lattice_demo")
        assert demo_shell["DEMO_RECEIVER_PORT"] == env["DEMO_RECEIVER_PORT"]
        assert demo_shell["LATTICE_STRIPE_API_BASE"].endswith(f":{env['DEMO_STRIPE_PORT']}")
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
        first_pids = _pids(home / "demo")
        assert all(_alive(pid) for pid in first_pids)

        # Ports chosen by hand in that shell stay chosen (the ones it sourced are shed).
        chosen = _ports()
        again = _demo({**demo_shell, **chosen})

        assert again.returncode == 0, again.stderr[-3000:]
        assert "Traceback" not in again.stderr
        assert "[ok]" in again.stdout + again.stderr
        rewritten = _sourced(home / "demo" / "env")
        assert {k: rewritten[k] for k in chosen} == chosen
        # The stack's own file still names the stack's database, not the demo's.
        assert _sourced(home / "stack.env")["LATTICE_DATABASE_URL"] == stack.database_url
        # The first run's receiver and projectors were stopped, not left beside the new.
        assert not any(_alive(pid) for pid in first_pids)
        second_pids = _pids(home / "demo")
        assert all(_alive(pid) for pid in second_pids)

        # A month long enough (~80 s of deliveries) that the signal lands while it is sent.
        long_month = {**env, "DEMO_CUSTOMERS": "2000"}
        for sig, group, status_wanted in (
            (signal.SIGINT, True, 130),
            (signal.SIGTERM, False, 143),
        ):
            status, said, took, pids = _interrupted_while_simulating(long_month, sig, group=group)

            assert status == status_wanted, said[-3000:]
            assert not any(_alive(pid) for pid in second_pids)
            assert "interrupted: stopping the demo's receiver and projectors" in said
            assert "done in" not in said
            assert took < 30, f"{sig.name} acted on only after {took:.0f} s"
            assert not any(_alive(pid) for pid in pids)
            assert not (home / "demo" / "serve.pid").exists()
    finally:
        _demo(env, "stop")


def test_demo_stop_stops_what_the_demo_left_running(stack: Stack) -> None:
    """`deploy/demo.sh stop`, as its last lines say: the receiver and projectors end."""
    home = load_settings().home
    env = {**os.environ, "DEMO_CUSTOMERS": "5", "DEMO_ACCOUNTS": "1", **_ports()}
    try:
        ran = _demo(env)
        assert ran.returncode == 0, ran.stderr[-3000:]
        pids = _pids(home / "demo")
        assert all(_alive(pid) for pid in pids)
        stopped = _demo(env, "stop")
        assert stopped.returncode == 0
        assert "stopped the demo's receiver and projectors" in stopped.stderr
        assert not any(_alive(pid) for pid in pids)
    finally:
        _demo(env, "stop")
