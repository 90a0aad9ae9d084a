"""Fixtures: the real stack started by `make test`, and per-test topics and databases.

Every integration test gets its own topic names and its own PostgreSQL database, so tests
run in any order and leave nothing behind.
"""

from __future__ import annotations

import os
import random
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from deploy.settings import Settings
from deploy.stack.topics import delete_topics, ensure_topics
from tests.support import tallies

TEST_PARTITIONS = 3


@dataclass(frozen=True)
class Stack:
    """Addresses of the running Kafka broker and PostgreSQL server."""

    kafka_bootstrap: str
    database_url: str


@dataclass(frozen=True)
class Topics:
    """This test's own topics."""

    events: str
    dlq: str
    usage: str
    partitions: int


def pytest_configure(config: pytest.Config) -> None:
    """One fault seed for the run, chosen before any worker starts (workers inherit it)."""
    os.environ.setdefault("LATTICE_FAULT_SEED", str(random.randrange(1 << 30)))


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, on the controller
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`make test`'s workers share the tests out one by one, but each serial group as one
    unit (tests/support/serial_groups.py)."""
    if config.getvalue("dist") not in ("load", "loadgroup"):
        return None  # another --dist asked for by hand
    from tests.support.serial_groups import SerialGroupScheduling

    return SerialGroupScheduling(config, log)


@pytest.fixture(scope="session")
def stack() -> Stack:
    """The stack `make test` started (its addresses come from .lattice/stack.env)."""
    bootstrap = os.environ.get("LATTICE_KAFKA_BOOTSTRAP")
    database_url = os.environ.get("LATTICE_DATABASE_URL")
    if not bootstrap or not database_url:
        raise pytest.UsageError(
            "LATTICE_KAFKA_BOOTSTRAP and LATTICE_DATABASE_URL are not set: run the tests with "
            "`make test`, or `make stack && . .lattice/stack.env` first"
        )
    return Stack(bootstrap, database_url)


@pytest.fixture
def unique() -> str:
    """A short name unique to this test, for topics, groups and databases."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def topics(stack: Stack, unique: str) -> AsyncIterator[Topics]:
    """Fresh `stripe.events`, `.dlq` and `usage.reported` topics for this test alone."""
    names = Topics(
        f"{unique}.stripe.events",
        f"{unique}.stripe.events.dlq",
        f"{unique}.usage.reported",
        TEST_PARTITIONS,
    )
    all_names = [names.events, names.dlq, names.usage]
    await ensure_topics(stack.kafka_bootstrap, all_names, partitions=TEST_PARTITIONS)
    yield names
    await delete_topics(stack.kafka_bootstrap, all_names)


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture
async def database_url(stack: Stack, unique: str) -> AsyncIterator[str]:
    """The URL of a fresh, empty database for this test alone (dropped afterwards)."""
    admin = await asyncpg.connect(stack.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{unique}"')
    finally:
        await admin.close()
    yield _with_database(stack.database_url, unique)
    admin = await asyncpg.connect(stack.database_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{unique}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def settings(stack: Stack, topics: Topics, database_url: str, unique: str) -> Settings:
    """Settings pointing at this test's topics, database and consumer groups (a group is
    the broker's, not the topic's: tests in other workers running the same projector under
    one group would join each other's and rebalance each other's partitions)."""
    return Settings(
        kafka_bootstrap=stack.kafka_bootstrap,
        database_url=database_url,
        topic=topics.events,
        usage_topic=topics.usage,
        partitions=topics.partitions,
        group_prefix=unique,
    )


# Every output of the suite is searched for anything shaped like a signing secret or a
# Stripe key: each test's captured output and log records, and every log file the tests'
# processes wrote under the session's temporary folder (receivers, projectors, stacks).
SECRET_SHAPES = re.compile(r"whsec_[0-9A-Za-z_]{4,}|\b[sr]k_(?:test|live)_[0-9A-Za-z_]{4,}")
_leaks: list[str] = []


def _leaked(where: str, text: str) -> None:
    for found in SECRET_SHAPES.finditer(text):
        _leaks.append(f"{where}: {found.group()[:12]}...")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Search what one test phase printed or logged."""
    for name, text in report.sections:
        _leaked(f"{report.nodeid} ({name})", text)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Search the processes' log files; fail the run if anything leaked. A worker hands
    its tallies to the controller, which prints them."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["lattice_tallies"] = tallies.export()
    factory = getattr(session.config, "_tmp_path_factory", None)
    base = factory.getbasetemp() if factory is not None else None
    if base is not None and base.exists():
        for log in sorted(base.rglob("*.log")):
            _leaked(str(log.relative_to(base)), log.read_text(errors="replace"))
    if _leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, on the controller
def pytest_testnodedown(node: Any, error: object) -> None:
    """Add up what a worker counted."""
    output = getattr(node, "workeroutput", None) or {}
    if "lattice_tallies" in output:
        tallies.merge(output["lattice_tallies"])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The run's tallies (fuzz cases, faults injected); then each place a secret-shaped
    string was found (its first characters only)."""
    for title, lines in tallies.summaries():
        terminalreporter.section(title)
        for line in lines:
            terminalreporter.write_line(line)
    if _leaks:
        terminalreporter.section("secrets in the suite's output")
        for leak in _leaks[:50]:
            terminalreporter.write_line(leak)
        terminalreporter.write_line(f"{len(_leaks)} in all: the run fails")
