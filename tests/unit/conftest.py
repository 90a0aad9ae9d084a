"""Unit tests that configure logging (`configure_logging`, `lattice` commands run in
process) bind it to the output pytest captures for that test alone: put the defaults
back after each, or a later test logs into a closed file."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

from deploy import logs


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    logs._json_lines = None
