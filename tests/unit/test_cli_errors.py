"""Which failures `lattice` reports as "cannot reach Kafka or PostgreSQL" (one line), and
what every `lattice` process loads before its command runs."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.cli import _unreachable, main


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


@pytest.mark.parametrize("action", ["up", "status", "env"])
def test_only_is_refused_where_it_would_be_ignored(
    action: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`stack up --only postgresql` started Kafka too: refused in one line, before
    anything starts (the home stays empty)."""
    home = tmp_path / "home"
    assert main(["stack", action, "--only", "postgresql", "--home", str(home)]) == 2
    assert "--only works with `stack down`" in capsys.readouterr().err
    assert not home.exists()


def test_paths_and_urls_given_on_the_command_line_fail_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder where a file goes, a folder that cannot be made, a URL httpx cannot use:
    each ends in one line naming the argument (they were tracebacks, or blamed on Kafka)."""
    event = tmp_path / "event.json"
    event.write_text('{"id": "evt_1", "object": "event", "type": "customer.created"}')
    cases = [
        (
            ["simulate", "--dry-run", "--customers", "1", "--expected", str(tmp_path)],
            2,
            "--expected",
        ),
        (["simulate", "--customers", "1", "--url", "http://localhost:80a"], 2, "--url"),
        (["stack", "up", "--home", "/proc/lattice-here"], 2, "cannot use the stack's folder"),
        (
            [
                "send",
                str(event),
                "--endpoint",
                "p",
                "--secret",
                "whsec_x",
                "--url",
                "http://localhost:80a",
            ],
            1,
            "could not POST",
        ),
        (
            # The demo prints the endpoint's whole URL too: /webhooks/p/webhooks/p was a 404.
            [
                *("send", str(event), "--endpoint", "p", "--secret", "whsec_x"),
                *("--url", "http://127.0.0.1:8000/webhooks/p"),
            ],
            2,
            "give the receiver's base URL",
        ),
        (
            [
                *("send", str(event), "--endpoint", "p", "--secret", "whsec_x"),
                "--url",
                "http://[::1",
            ],
            2,
            "--url http://[::1: Invalid IPv6 URL",
        ),
    ]
    for argv, status, says in cases:
        assert main(argv) == status, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert err, argv
        assert err[-1].startswith("lattice"), (argv, err)
        assert says in err[-1], (argv, err)
        assert "Traceback" not in "\n".join(err)


def test_the_command_line_starts_without_the_receivers_server_or_the_simulator() -> None:
    """Every `lattice` process imports `deploy.cli`: a projector restarted, `status`, a
    `send`. Starlette, uvicorn and the simulator load only for the commands that use them
    (the simulator alone is a few tenths of a second on this machine)."""
    heavy = (
        "starlette",
        "uvicorn",
        "ingest.app",
        "ingest.simulate.generator",
        "ingest.simulate.deliver",
        "ingest.simulate.report",
    )
    code = (
        "import sys, deploy.cli; deploy.cli.build_parser(); "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert loaded.stdout.strip() == "[]", loaded.stdout
