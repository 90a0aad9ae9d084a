"""Which tests `make test`'s pytest-xdist workers must run one after another, in one worker.

The fault scenarios share a private broker and PostgreSQL, which they kill; the stack and
demo tests rewrite the shared home's files (.lattice/stack.env, .lattice/demo). Every
other test has its own topics and database, and runs in any worker, beside any other.

pytest-xdist's `xdist_group` marks cannot say this under pytest 9.2 (`--dist loadgroup`
renames a test's node id, which pytest 9.2 no longer reads), so the run's scheduler
(tests/conftest.py, `pytest_xdist_make_scheduler`) groups by path instead.
"""

from __future__ import annotations

from xdist.scheduler import LoadScopeScheduling

SERIAL_GROUPS = {
    "tests/faults/": "faults",
    "tests/integration/test_stack.py": "home",
    "tests/e2e/test_demo.py": "home",
}


def group_of(nodeid: str) -> str | None:
    """The serial group of the test `nodeid`, if it belongs to one."""
    path = nodeid.split("::", 1)[0]
    for prefix, group in SERIAL_GROUPS.items():
        if path.startswith(prefix):
            return group
    return None


class SerialGroupScheduling(LoadScopeScheduling):  # type: ignore[misc]  # xdist is untyped
    """xdist's load scheduling, test by test, but a serial group is one unit of work: all
    its tests go to one worker, in their order."""

    def _split_scope(self, nodeid: str) -> str:
        group = group_of(nodeid)
        return nodeid if group is None else f"serial group {group}"
