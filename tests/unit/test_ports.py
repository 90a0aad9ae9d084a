"""The test suite's private servers get ports no outgoing connection and no other xdist
worker can take before they bind."""

from __future__ import annotations

import itertools
import socket
from pathlib import Path

import pytest

from deploy import demo_env
from deploy.stack.errors import StackError
from deploy.stack.process import LOWEST_PICKED, ephemeral_low
from tests.support import ports


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "_handed", set())


def test_ports_are_below_the_kernels_ephemeral_range_and_never_handed_out_twice() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
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
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    assert all(slices[1][0] <= ports.free_port(2) < slices[1][1] - 1 for _ in range(20))


def test_the_demo_takes_its_ports_from_its_variables_else_picks_safe_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DEMO_STRIPE_PORT", "24567")
    assert demo_env.demo_port("DEMO_STRIPE_PORT") == 24567
    monkeypatch.setenv("DEMO_STRIPE_PORT", "80x")
    with pytest.raises(ValueError, match="DEMO_STRIPE_PORT='80x' is not a port number"):
        demo_env.demo_port("DEMO_STRIPE_PORT")
    monkeypatch.delenv("DEMO_STRIPE_PORT")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        busy = taken.getsockname()[1]
        picked = demo_env.demo_port("DEMO_STRIPE_PORT", busy)
    assert LOWEST_PICKED <= picked < ephemeral_low()
    free = ports.free_port()
    assert demo_env.demo_port("DEMO_STRIPE_PORT", free) == free
