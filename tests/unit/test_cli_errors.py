"""Which failures `lattice` reports as "cannot reach Kafka or PostgreSQL" (one line)."""

from __future__ import annotations

import errno

import pytest

from deploy.cli import _unreachable


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.EHOSTUNREACH, "Connect call failed ('2001:db8::1', 5432, 0, 0)"),
        OSError(errno.ENETUNREACH, "Network is unreachable"),
        # asyncio, when every address of a name failed (localhost as ::1 and 127.0.0.1)
        OSError(
            "Multiple exceptions: [Errno 111] Connect call failed ('::1', 5432, 0, 0), "
            "[Errno 111] Connect call failed ('127.0.0.1', 5432)"
        ),
        ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed"),
    ],
)
def test_an_address_the_socket_layer_cannot_reach_is_unreachable(exc: OSError) -> None:
    assert _unreachable(exc)


@pytest.mark.parametrize(
    "exc",
    [PermissionError(errno.EACCES, "Permission denied"), OSError(errno.ENOSPC, "No space")],
)
def test_a_local_file_error_is_not_blamed_on_the_network(exc: OSError) -> None:
    assert not _unreachable(exc)
