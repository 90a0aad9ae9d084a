"""Fuzz-suite plumbing: a per-run count of generated cases, printed after the tests.

Each fuzz test adds the number of inputs it generated; the summary makes the size of a run
visible (the suite aims at more than 10,000 hostile inputs per run).
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
from hypothesis import HealthCheck, settings

from tests.support.tallies import tally

# LATTICE_FUZZ_SCALE multiplies every test's example count (nightly runs use 10 or more).
SCALE = max(1, int(os.environ.get("LATTICE_FUZZ_SCALE", "1")))

_cases = tally("fuzz cases", total=True)


def fuzz_settings(count: int) -> settings:
    """Hypothesis settings for one fuzz test: `count` examples (scaled), no example database
    (runs leave nothing in the work tree), no per-example deadline (a shared, noisy machine).
    Applied per test, so other suites' hypothesis profiles stay as they are."""
    return settings(
        max_examples=count * SCALE,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.fixture(scope="session")
def cases() -> Counter[str]:
    """The run's case counter; add to it under the test's name."""
    return _cases
