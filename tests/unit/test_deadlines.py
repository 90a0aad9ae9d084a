"""One timer for many waits of the same length: each expires at its own deadline, once."""

from __future__ import annotations

import asyncio

from ingest.deadlines import Deadlines, Wait


async def test_only_unfinished_waits_expire_each_at_its_deadline() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(0.05)
    expired: dict[str, float] = {}
    started: dict[str, float] = {}
    waits: dict[str, Wait] = {}

    def watch(name: str) -> None:
        started[name] = loop.time()
        waits[name] = deadlines.start(lambda: expired.setdefault(name, loop.time()))

    watch("late")
    watch("done")
    await asyncio.sleep(0.02)  # the later start must get its own, later deadline
    watch("later")
    waits["done"].finish()
    await asyncio.sleep(0.12)  # time passing is what is under test
    assert set(expired) == {"late", "later"}
    for name in expired:
        assert expired[name] - started[name] >= 0.05 - 0.002
        assert waits[name].expired
        assert waits[name].finished
    assert not waits["done"].expired
    deadlines.close()


async def test_a_closed_deadlines_expires_nothing() -> None:
    deadlines = Deadlines(0.01)
    expired: list[int] = []
    deadlines.start(lambda: expired.append(1))
    deadlines.close()
    await asyncio.sleep(0.03)
    assert expired == []
