"""Free loopback ports for private servers started by a test.

A port is picked below the kernel's ephemeral range, never inside it
(`deploy.stack.process.pick_port`). A broker's JVM binds its listeners seconds after the
pick, and all the while the suite's clients open outgoing connections, each from an
ephemeral port the kernel chooses: a pick from that range can be taken in between (a CI
run lost a secured broker to it, "Address already in use"). Below the range only servers
bind, and every server a test starts gets its port from here.

Each pytest-xdist worker picks from a slice of its own, so two workers never hand out the
same port, and a process never hands one out twice, so two picks made before either server
binds cannot overlap.
"""

from __future__ import annotations

import os

from deploy.stack.process import LOWEST_PICKED, ephemeral_low, pick_port

_handed: set[int] = set()


def free_port(pairs: int = 1) -> int:
    """A port P such that P .. P+pairs-1 are all free right now and were never handed out
    by this process (Kafka needs P and P+1)."""
    port = pick_port(pairs, within=_slice(), avoid=_handed)
    _handed.update(range(port, port + pairs))
    return port


def _slice() -> tuple[int, int]:
    """This process's ports: its xdist worker's share of those below the ephemeral range."""
    high = ephemeral_low()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2:
        return LOWEST_PICKED, high
    size = (high - LOWEST_PICKED) // count
    # A worker that replaces a crashed one gets the next id (gw3 of three): it takes the
    # slice of the one it replaces.
    low = LOWEST_PICKED + int(worker[2:]) % count * size
    return low, low + size
