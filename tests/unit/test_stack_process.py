"""Telling a service we just started that died from one still starting."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from deploy.stack import process


def test_a_process_started_is_alive_whatever_its_command_says_and_ended_once_killed(
    tmp_path: Path,
) -> None:
    """`running_pid` asks whether the command is the service's (a pid file may outlive
    its process); a server that has just been started is ours whatever its command line
    says at that instant (empty while the `java` launcher execs itself again)."""
    pid_file = tmp_path / "sleep.pid"
    pid = process.spawn(["sleep", "30"], log_file=tmp_path / "sleep.log", pid_file=pid_file)
    try:
        assert process.running_pid(pid_file, str(tmp_path / "no-such-service")) is None
        assert not process.exited(pid)
    finally:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not process.exited(pid):  # a zombie until reaped: `exited` reaps it
        assert time.monotonic() < deadline, "a SIGKILLed sleep still counts as running"
        time.sleep(0.01)


def test_a_service_does_not_inherit_a_descriptor_its_caller_left_open(tmp_path: Path) -> None:
    """`deploy/demo.sh` holds its lock on fd 9 while it runs `lattice stack up`: a broker
    started then must not hold that lock for as long as it runs."""
    lock = tmp_path / "demo.lock"
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o600)
    os.set_inheritable(fd, True)  # as a shell's `exec 9>file` leaves it
    pid = process.spawn(["sleep", "30"], log_file=tmp_path / "sleep.log", pid_file=tmp_path / "p")
    try:
        # Once it runs `sleep` (until its exec, it still has the spawner's close-on-exec ones).
        deadline = time.monotonic() + 10
        while b"sleep" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline, "the child never ran sleep"
            time.sleep(0.01)
        held = set()
        for name in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(FileNotFoundError):
                held.add(os.readlink(f"/proc/{pid}/fd/{name}"))
    finally:
        os.kill(pid, signal.SIGKILL)
        os.close(fd)
        while not process.exited(pid):
            time.sleep(0.01)
    assert str(lock) not in held
    assert os.devnull in held  # its stdin: the listing was of the child's descriptors
