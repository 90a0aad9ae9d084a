"""Free loopback ports for private servers started by a test.

A port is picked below the kernel's ephemeral range, never inside it. A broker's JVM binds
its listeners seconds after the pick, and all the while the suite's clients open outgoing
connections, each from an ephemeral port the kernel chooses: a pick from that range can be
taken in between (a CI run lost a secured broker to it, "Address already in use"). Below the
range only servers bind, and every server a test starts gets its port from here.

Each pytest-xdist worker picks from a slice of its own, so two workers never hand out the
same port, and a process never hands one out twice, so two picks made before either server
binds cannot overlap.
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

LOWEST = 20000  # above the well-known ports and the stack's own (9092, 5432 and near)
_handed: set[int] = set()


def free_port(pairs: int = 1) -> int:
    """A port P such that P .. P+pairs-1 are all free right now and were never handed out
    by this process (Kafka needs P and P+1)."""
    low, high = _slice()
    span = high - low - pairs
    start = random.randrange(span)
    for step in range(span):
        port = low + (start + step) % span
        wanted = range(port, port + pairs)
        if _handed.isdisjoint(wanted) and all(_is_free(p) for p in wanted):
            _handed.update(wanted)
            return port
    raise RuntimeError(f"no {pairs} free loopback ports left in {low}..{high - 1}")


def _slice() -> tuple[int, int]:
    """This process's ports: its xdist worker's share of LOWEST .. the ephemeral range."""
    high = _ephemeral_low()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2:
        return LOWEST, high
    size = (high - LOWEST) // count
    low = LOWEST + int(worker[2:]) * size
    return low, low + size


def _ephemeral_low() -> int:
    """Where the kernel's range for outgoing connections starts (32768 on Linux by default)."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return max(LOWEST + 1000, int(text.split()[0]))
    except (OSError, ValueError, IndexError):
        return 32768


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
