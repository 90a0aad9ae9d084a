"""Telling a service we just started that died from one still starting."""

from __future__ import annotations

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
