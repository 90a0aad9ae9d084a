"""Homes for the private servers tests start, outside pytest's temporary folders.

As root, PostgreSQL runs as an unprivileged user that must reach its data directory.
Every pytest session that starts re-applies mode 0700 to /tmp/pytest-of-<user>; a server
kept under it by another session running at the same time would then lose its data
directory and PANIC. A folder of its own under the system temporary folder does not move.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def server_home(prefix: str) -> Iterator[Path]:
    """A fresh folder for a private server, removed afterwards."""
    home = Path(tempfile.mkdtemp(prefix=f"lattice-{prefix}-"))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


REPO = Path(__file__).resolve().parents[2]


def share_kafka_jars(home: Path) -> Path:
    """Let a private broker in `home` use the stack's Kafka jars (a symlink) instead of
    resolving them with Maven again: a JVM and 43 MB copied per broker. Returns `home`."""
    shared = (REPO / os.environ.get("LATTICE_HOME", ".lattice") / "kafka" / "libs").resolve()
    libs = home / "kafka" / "libs"
    if shared.is_dir() and not libs.exists():
        libs.parent.mkdir(parents=True, exist_ok=True)
        libs.symlink_to(shared)
    return home
