"""The store's in-batch merge (pure): any order and any duplication of one batch's changes
merges to the same rows, as the SQL merge does between batches."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from projectors.meters.changes import UsageReported
from projectors.meters.store import merge_facts, newest

facts = st.builds(
    UsageReported,
    identifier=st.sampled_from(["a", "b", "c"]),
    event_name=st.sampled_from(["api", "logins"]),
    customer=st.sampled_from(["cus_1", "cus_2"]),
    value=st.decimals(min_value=0, max_value=10, places=2),
    timestamp=st.integers(min_value=0, max_value=5),
    cancel=st.booleans(),
)


@given(st.lists(facts, max_size=12), st.randoms())
def test_merging_facts_ignores_order_and_duplicates(
    batch: list[UsageReported], rng: object
) -> None:
    shuffled = batch + batch[: len(batch) // 2]
    rng.shuffle(shuffled)  # type: ignore[attr-defined]
    assert sorted(merge_facts(batch), key=repr) == sorted(merge_facts(shuffled), key=repr)


def test_a_report_wins_over_a_cancel_and_the_cancel_is_kept() -> None:
    report = UsageReported("a", "api", "cus_1", Decimal(5), 10, cancel=False)
    cancel = UsageReported("a", "api", "cus_1", Decimal(0), 3, cancel=True)
    assert merge_facts([cancel, report]) == [(report, True, True)]


@given(st.lists(st.tuples(st.sampled_from("xyz"), st.integers(0, 3), st.text(max_size=2))))
def test_newest_keeps_the_greatest_per_key(items: list[tuple[str, int, str]]) -> None:
    kept = newest(items, lambda i: i[0], lambda i: (i[1], i[2]))
    assert sorted(kept) == sorted(
        max((i for i in items if i[0] == k), key=lambda i: (i[1], i[2]))
        for k in {i[0] for i in items}
    )
