"""Background processes with pid files, and the port checks around them."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import random
import signal
import socket
import time
from collections.abc import Callable, Coroutine, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any, TypeVar

from deploy.stack.errors import StackError

# What pick_port chooses from: above the well-known ports and the stack's Kafka (9092-9093).
LOWEST_PICKED = 20000

T = TypeVar("T")


def run_coroutine(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, even when called inside an event loop
    (tests start private brokers from async tests): then it runs on a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def recorded_pid(pid_file: Path) -> int | None:
    """The pid a pid file records (postmaster.pid has more lines; the pid is the first
    one everywhere), or None when there is no readable one."""
    try:
        return int(pid_file.read_text().split("\n", 1)[0].strip())
    except (FileNotFoundError, ValueError):
        return None


def running_pid(pid_file: Path, owner: str) -> int | None:
    """The pid recorded in `pid_file` if that process is alive and is ours: `owner` is
    one of its command's arguments (a path only our service's command has), or, after the
    folder was moved, its working directory (a postmaster works in its data directory)
    while its command names a folder of that name. A pid file left by a reboot or a
    SIGKILL may name a process that has since reused the pid: that one is not ours to
    wait for or to signal."""
    pid = recorded_pid(pid_file)
    if pid is None or exited(pid):
        return None
    return pid if _is_owned(pid, owner) else None


def exited(pid: int) -> bool:
    """True when process `pid` has ended: gone, or a zombie (reaped here if it is our
    child). The pid's owner is not asked: for a server we just started, `running_pid`'s
    question whether the command is ours cannot be answered while it replaces its own
    image (the `java` launcher may exec itself again), and would take it for one that died."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return True
    return _state(pid) == "Z"


def _is_owned(pid: int, owner: str) -> bool:
    if _command_holds(pid, owner):
        return True
    try:
        moved = os.readlink(f"/proc/{pid}/cwd") == owner
    except OSError:
        return False  # exited meanwhile, no /proc, or not ours to look into
    # Working in our folder, and its command names a folder of that name (its old path):
    # a shell someone left in the folder is not the server.
    return moved and _command_names(pid, Path(owner).name)


def _command_names(pid: int, name: str) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return any(Path(arg.decode(errors="replace")).name == name for arg in command.split(b"\0"))


def _command_holds(pid: int, owner: str) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False  # it exited meanwhile
    except OSError:
        return True  # no /proc to ask (or not allowed to): trust the pid file
    return owner.encode() in command.split(b"\0")


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "?"
    return stat.rsplit(")", 1)[1].split()[0]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def can_bind(port: int, host: str = "127.0.0.1") -> bool:
    """True when a server could listen on host:port right now. With SO_REUSEADDR, as
    every server here sets it (uvicorn, Kafka, PostgreSQL): the closed connections of one
    stopped a moment ago (TIME_WAIT) do not make its port look taken."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


def ephemeral_low() -> int:
    """Where the kernel's range of ports for outgoing connections starts (32768 on Linux by
    default). A port for a server is best picked below it: a port picked inside it may be
    taken by some process's outgoing connection before the server binds it."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return max(LOWEST_PICKED + 1000, int(text.split()[0]))
    except (OSError, ValueError, IndexError):
        return 32768


def pick_port(
    pairs: int = 1, *, within: tuple[int, int] | None = None, avoid: AbstractSet[int] = frozenset()
) -> int:
    """A port P, chosen at random, with P .. P+pairs-1 all free right now and none in
    `avoid`: below the kernel's ephemeral range, or in `within` [low, high) when given."""
    low, high = within or (LOWEST_PICKED, ephemeral_low())
    span = high - low - pairs + 1
    if span <= 0:
        raise StackError(f"no {pairs} loopback ports fit in {low}..{high - 1}")
    start = random.randrange(span)
    for step in range(span):
        port = low + (start + step) % span
        wanted = range(port, port + pairs)
        if avoid.isdisjoint(wanted) and all(can_bind(p) for p in wanted):
            return port
    raise StackError(f"no {pairs} free loopback ports left in {low}..{high - 1}")


def require_free_port(port: int, what: str, variable: str) -> None:
    """Raise a StackError naming the variable to change when `port` is taken, and the
    process that holds it when this user may see it (often a stack of another checkout,
    or of this one before it moved: its pid files no longer name it)."""
    if not port_in_use(port):
        return
    holder = listener_of(port)
    who = "another process"
    if holder is not None:
        pid, command = holder
        who = f"pid {pid} ({command[:160]})"
    raise StackError(
        f"port {port} (needed by {what}) is already in use by {who}: stop it (`make "
        f"stack-down` in the checkout that started it, or `kill` it) or set {variable} to "
        "a free port"
    )


def listener_of(port: int) -> tuple[int, str] | None:
    """The pid and command line of the process listening on TCP `port`, when /proc shows
    it to this user; None otherwise."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            # local address as HEX_IP:HEX_PORT, state 0A = LISTEN, inode in column 10
            if (
                len(fields) > 9
                and fields[3] == "0A"
                and int(fields[1].rsplit(":", 1)[1], 16) == port
            ):
                inodes.add(fields[9])
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in targets:
                    command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").strip()
                    return int(proc.name), command.decode("utf-8", "replace")
        except OSError:
            continue
    return None


def spawn(argv: Sequence[str], *, log_file: Path, pid_file: Path) -> int:
    """Start `argv` in its own session, output appended to `log_file`; record its pid.

    posix_spawn rather than Popen: the service outlives this process, and a Popen object
    collected while its child runs warns.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        pid = os.posix_spawnp(
            argv[0],
            list(argv),
            dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, log_fd, 1),
                (os.POSIX_SPAWN_DUP2, log_fd, 2),
                *((os.POSIX_SPAWN_CLOSE, fd) for fd in _inherited_fds()),
            ],
            setsid=True,
        )
    finally:
        os.close(log_fd)
    pid_file.write_text(f"{pid}\n")
    return pid


def _inherited_fds() -> list[int]:
    """Descriptors above stderr a child would inherit: those a shell opened for us (a
    script's lock, say), which a server running for days must not hold."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            try:
                if os.get_inheritable(fd):
                    found.append(fd)
            except OSError:  # the listing's own descriptor, closed by now
                continue
    return found


def stop(pid_file: Path, owner: str, *, timeout: float = 30.0) -> bool:
    """SIGTERM the recorded process (see `running_pid` for `owner`), SIGKILL it after
    `timeout`; True if one was running."""
    pid = running_pid(pid_file, owner)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while running_pid(pid_file, owner) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    if running_pid(pid_file, owner) is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        while running_pid(pid_file, owner) is not None:
            if time.monotonic() > deadline:
                raise StackError(f"process {pid} (from {pid_file}) survived SIGKILL")
            time.sleep(0.05)
    pid_file.unlink(missing_ok=True)
    return True


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log written)"
