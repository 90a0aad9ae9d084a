"""The test suite's private servers get ports no outgoing connection and no other xdist
worker can take before they bind."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
from pathlib import Path

import pytest

from deploy import demo_env
from deploy.stack.errors import StackError
from deploy.stack.process import LOWEST_PICKED, ephemeral_low
from tests.support import ports

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "_handed", set())


def test_ports_are_below_the_kernels_ephemeral_range_and_never_handed_out_twice() -> None:
    low = ephemeral_low()
    assert low == int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    picks = [ports.free_port(5) for _ in range(40)]
    handed = [p + i for p in picks for i in range(5)]
    assert len(set(handed)) == len(handed)
    assert all(LOWEST_PICKED <= p < low for p in handed)


def test_a_port_in_use_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    base = ports.free_port(8)  # eight free ports of this worker's own slice
    ports._handed.clear()
    monkeypatch.setattr(ports, "_slice", lambda: (base, base + 8))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 3))
        got = [ports.free_port() for _ in range(7)]
        with pytest.raises(StackError, match="no 1 free loopback ports"):
            ports.free_port()
    assert sorted(got) == [p for p in range(base, base + 8) if p != base + 3]


def test_each_xdist_worker_has_a_slice_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    slices = []
    for n in range(3):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{n}")
        slices.append(ports._slice())
    for (low, high), (next_low, _) in itertools.pairwise(slices):
        assert low < high <= next_low
    assert slices[-1][1] <= ephemeral_low()
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    assert all(slices[1][0] <= ports.free_port(2) < slices[1][1] - 1 for _ in range(20))
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw4")  # replaced gw1 after a crash, say
    assert ports._slice() == slices[1]


def test_the_demo_takes_its_ports_from_its_variables_else_picks_safe_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def port() -> int:
        return demo_env.demo_port("DEMO_STRIPE_PORT", "the demo's stand-in Stripe API")

    given = ports.free_port()
    monkeypatch.setenv("DEMO_STRIPE_PORT", str(given))
    assert port() == given
    monkeypatch.setenv("DEMO_STRIPE_PORT", "80x")
    with pytest.raises(StackError, match="DEMO_STRIPE_PORT='80x' is not a port number"):
        port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        monkeypatch.setenv("DEMO_STRIPE_PORT", str(busy))
        with pytest.raises(StackError, match=f"port {busy} .needed by the demo's stand-in"):
            port()
        monkeypatch.delenv("DEMO_STRIPE_PORT")
        picked = demo_env.demo_port("DEMO_STRIPE_PORT", "the fake", busy)
    assert LOWEST_PICKED <= picked < ephemeral_low()
    free = ports.free_port()
    assert demo_env.demo_port("DEMO_STRIPE_PORT", "the fake", free) == free


def test_a_demo_shell_sheds_the_demos_ports_but_not_ones_set_by_hand(tmp_path: Path) -> None:
    """`deploy/shed-demo-env.sh`, sourced by the demo and `with-stack.sh` in a shell that
    sourced the demo's env: the ports the last demo wrote go with its database and topics;
    a port set since by hand is kept."""
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "env").write_text(
        "export LATTICE_DATABASE_URL=postgresql://p@127.0.0.1:1/lattice_demo\n"
        "export DEMO_RECEIVER_PORT=23001\nexport DEMO_STRIPE_PORT=23002\n"
    )
    shell = {
        "PATH": os.environ["PATH"],
        "LATTICE_HOME": str(tmp_path),
        "LATTICE_DATABASE_URL": "postgresql://p@127.0.0.1:1/lattice_demo",
        "LATTICE_TOPIC": "demo.stripe.events",
        "DEMO_RECEIVER_PORT": "23001",  # the demo's
        "DEMO_STRIPE_PORT": "24444",  # set by hand since
    }
    script = ". deploy/shed-demo-env.sh; env"
    out = subprocess.run(
        ["bash", "-c", script], env=shell, capture_output=True, text=True, check=True, cwd=REPO
    ).stdout.splitlines()
    kept = dict(line.split("=", 1) for line in out if "=" in line)
    assert {"LATTICE_DATABASE_URL", "LATTICE_TOPIC", "DEMO_RECEIVER_PORT"}.isdisjoint(kept)
    assert kept["DEMO_STRIPE_PORT"] == "24444"
    # The stack's own database is no demo's: nothing is shed.
    stack = {**shell, "LATTICE_DATABASE_URL": "postgresql://p@127.0.0.1:1/lattice"}
    out = subprocess.run(
        ["bash", "-c", script], env=stack, capture_output=True, text=True, check=True, cwd=REPO
    ).stdout.splitlines()
    assert {"DEMO_RECEIVER_PORT=23001", "LATTICE_TOPIC=demo.stripe.events"} <= set(out)
