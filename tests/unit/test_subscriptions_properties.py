"""Any order and any duplication of a customer's events ends in the same rows as the true
order, and those rows are what the last event said (subscriptions and customers)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from projectors.subscriptions import projection
from tests.fixtures.lifecycles import billing_history, delivered
from tests.fixtures.model import content, last_snapshots, project


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_any_delivery_order_gives_the_tables_of_the_true_order(data: st.DataObject) -> None:
    history: list[dict[str, Any]] = data.draw(billing_history())
    arrived = data.draw(delivered(history))

    truth = project(projection, history)

    assert project(projection, arrived) == truth
    assert {key: content(row) for key, row in truth.items()} == last_snapshots(projection, history)


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_replaying_the_log_again_changes_nothing(data: st.DataObject) -> None:
    """The log applied again after itself, forwards or backwards: in either order the
    newest snapshot must keep winning (backwards, a guard that let the last arrival win
    would end on the oldest)."""
    history: list[dict[str, Any]] = data.draw(billing_history())
    once = project(projection, history)

    assert project(projection, history + history) == once
    assert project(projection, history + history[::-1]) == once
