"""Free loopback ports for private servers started by a test."""

from __future__ import annotations

import socket


def free_port(pairs: int = 1) -> int:
    """A port P such that P .. P+pairs-1 are all free right now (Kafka needs P and P+1)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port + pairs >= 65535:
            continue
        if all(_is_free(port + i) for i in range(pairs)):
            return port
    raise RuntimeError("no free loopback port found")


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
