"""The events a backfill found missing stay on disk, not in memory, until appended."""

from __future__ import annotations

import tracemalloc

from projectors.stripe_api.missing import MissingEvents
from tests.fixtures import stripe_objects as so


def _listed(n: int, created: int, padding: int = 0) -> dict[str, object]:
    customer = so.customer(id=f"cus_{n:08d}", description="x" * padding)
    return so.event("customer.created", customer, created=created, id=f"evt_{n:08d}")


def test_they_come_back_oldest_first_each_once_with_the_account_first_listed() -> None:
    missing = MissingEvents()
    try:
        # Listed newest first, as Stripe lists: 3 and 2 share a second.
        for n, created in ((4, 400), (3, 300), (2, 300), (1, 100)):
            missing.add(_listed(n, created), None)
        missing.add(_listed(3, 300), "acct_1")  # listed again, for an account: kept once
        assert len(missing) == 4
        assert "evt_00000003" in missing
        in_order = missing.oldest_first()
        assert [m.id for m in in_order] == [f"evt_0000000{n}" for n in (1, 2, 3, 4)]
        bodies = list(missing.bodies(in_order[1:3]))
        assert bodies == [(_listed(2, 300), None), (_listed(3, 300), None)]
    finally:
        missing.close()


def test_a_month_of_bodies_is_not_held_in_memory() -> None:
    """5,000 events of ~4 KB (20 MB of JSON, several times that as parsed objects)."""
    missing = MissingEvents()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for n in range(5000):
            missing.add(_listed(n, 1_790_000_000 - n, padding=4000), None)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        missing.close()
    assert held - before < 3 * 1024 * 1024, f"{(held - before) / 2**20:.1f} MiB held"
