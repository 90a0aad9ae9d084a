"""The connect semantics in memory: every scenario's ledger and balances, and the same
result for any order and any duplication of a stream (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from projectors.base import Record
from projectors.connect import ConnectProjection, projection
from projectors.connect.changes import Change
from projectors.connect.fold import Balance, State, balances, fold, ledger
from tests.fixtures import connect_streams as streams
from tests.fixtures.connect_objects import application, payout
from tests.fixtures.records import as_record
from tests.fixtures.stripe_objects import T0, event

EVERYTHING = streams.everything()
RECORDS = [as_record(evt) for evt in EVERYTHING.events]


def changes_of(records: Iterable[Record]) -> list[Change]:
    return [change for record in records for change in projection.reduce(record)]


def state_of(events: Sequence[dict[str, Any]]) -> State:
    return fold(changes_of(as_record(evt) for evt in events))


def balance_rows(state: State) -> dict[tuple[str, str], tuple[int, ...]]:
    def row(b: Balance) -> tuple[int, ...]:
        return (b.transferred, b.reversed, b.application_fees, b.refunded_fees, b.paid_out, b.net)

    return {key: row(b) for key, b in balances(ledger(state).values()).items()}


def test_destination_charge_reversed_in_two_steps() -> None:
    stream = streams.destination_charge_reversed(amount=10_000, partial=3_000)
    state = state_of(stream.events)
    assert balance_rows(state) == stream.expected
    entries = ledger(state)
    assert entries[("reversal", stream.ids["r1"])].amount == -3_000
    assert entries[("reversal", stream.ids["r2"])].amount == -7_000
    tr = state.transfers[stream.ids["transfer"]]
    assert (tr.amount_reversed, tr.reversed) == (10_000, True)


def test_an_account_debit_is_taken_from_the_account_not_paid_to_the_platform() -> None:
    stream = streams.account_debited()
    ids = stream.ids
    ledger_entries = list(ledger(state_of(stream.events)).values())
    by_account = balances(ledger_entries)

    assert balance_rows(state_of(stream.events)) == stream.expected
    assert by_account[(ids["account"], "usd")].debited == 2_000
    assert (ids["platform"], "usd") not in by_account
    assert {
        (e.kind, e.account, e.amount) for e in ledger_entries if e.kind.startswith("debit")
    } == {
        ("debit", ids["account"], -3_000),
        ("debit_reversal", ids["account"], 1_000),
    }


def test_a_connected_platforms_own_transfers_and_fees_move_none_of_our_money() -> None:
    """With the platform's own account id known, the account's onward transfer and its own
    fee are skipped; its debit to us is booked. Unknown, the onward transfer cannot be told
    from a debit (the known limit the README names)."""
    stream = streams.account_runs_its_own_platform()
    ids = stream.ids
    configured = ConnectProjection(ids["platform"])
    records = [as_record(evt) for evt in stream.events]
    state = fold(c for r in records for c in configured.reduce(r))
    assert balance_rows(state) == stream.expected
    assert ids["onward"] not in state.transfers
    assert state.fees == {}
    debits = {(e.kind, e.amount) for e in ledger(state).values() if e.account == ids["account"]}
    assert debits == {("transfer", 10_000), ("debit", -1_000)}

    unknown = balance_rows(state_of(stream.events))
    assert unknown[(ids["account"], "usd")][-1] == 10_000 - 1_000 - 4_000
    assert (ids["theirs"], "usd") not in unknown  # its fee is skipped either way


def test_every_scenario_ends_in_its_balances() -> None:
    assert balance_rows(state_of(EVERYTHING.events)) == EVERYTHING.expected


def test_payout_paid_then_failed_is_booked_back_whichever_report_comes_first() -> None:
    stream = streams.payout_paid_then_failed(amount=4_000)
    paid, failed = stream.events[3], stream.events[4]
    for order in ([paid, failed], [failed, paid]):
        state = state_of([stream.events[0], *order])
        kinds = {kind: e.amount for (kind, _), e in ledger(state).items() if kind != "transfer"}
        assert kinds == {"payout": -4_000, "payout_failed": 4_000}
        assert state.payouts[stream.ids["payout"]].status == "failed"


def test_a_payout_that_never_got_paid_books_nothing() -> None:
    stream = streams.payout_paid_then_failed()
    created, in_transit, failed = stream.events[1], stream.events[2], stream.events[4]
    state = state_of([created, failed, in_transit])
    assert ledger(state) == {}
    assert state.payouts[stream.ids["payout"]].status == "failed"


def test_late_enabled_snapshot_does_not_re_enable_payouts() -> None:
    stream = streams.account_loses_payouts()
    enabled, disabled = stream.events
    row = state_of([disabled, enabled]).accounts[stream.ids["account"]]
    assert (row.payouts_enabled, row.requirements_currently_due) == (False, ("external_account",))


def test_fee_refund_needs_its_fee_to_be_booked() -> None:
    stream = streams.direct_charge_with_fee(fee=500, refunded=200)
    only_refund = state_of([stream.events[3]])
    assert ledger(only_refund) == {}
    assert balance_rows(state_of([stream.events[3], stream.events[1]])) == {
        (stream.ids["account"], "usd"): (0, 0, 500, 200, 0, -300)
    }


def test_a_canceled_payout_books_nothing_and_stays_canceled() -> None:
    acct, po_id = "acct_cancel", "po_cancel"
    created = event("payout.created", payout(id=po_id, amount=900), created=T0, account=acct)
    canceled = event(
        "payout.canceled",
        payout(id=po_id, amount=900, status="canceled"),
        created=T0 + 60,
        account=acct,
    )
    state = state_of([canceled, created])
    assert ledger(state) == {}
    assert state.payouts[po_id].status == "canceled"


def test_reauthorization_after_deauthorization_follows_the_newer_event() -> None:
    app = application()
    deauth = event("account.application.deauthorized", app, created=T0, account="acct_re")
    auth = event("account.application.authorized", app, created=T0 + 60, account="acct_re")
    for order in ([deauth, auth], [auth, deauth]):
        assert state_of(order).authorizations["acct_re"].deauthorized is False


@st.composite
def shuffled_with_duplicates(draw: st.DrawFn, records: list[Record]) -> list[Record]:
    extra = draw(st.lists(st.sampled_from(records), max_size=len(records)))
    return draw(st.permutations(records + extra))


@settings(max_examples=200, deadline=None)
@given(shuffled_with_duplicates(RECORDS))
def test_any_order_and_any_duplication_gives_the_same_tables(stream: list[Record]) -> None:
    ordered = fold(changes_of(RECORDS))
    shuffled = fold(changes_of(stream))
    assert shuffled == ordered
    assert ledger(shuffled) == ledger(ordered)
    assert balance_rows(shuffled) == EVERYTHING.expected


@settings(max_examples=100, deadline=None)
@given(shuffled_with_duplicates(RECORDS), st.integers(min_value=1, max_value=8))
def test_folding_in_batches_equals_folding_at_once(stream: list[Record], size: int) -> None:
    state = State()
    for start in range(0, len(stream), size):
        fold(changes_of(stream[start : start + size]), state)
    assert state == fold(changes_of(RECORDS))


def test_every_event_id_the_store_compares_is_compared_as_bytes() -> None:
    """`fold` orders two snapshots of one second by event id in Python (code points); the
    store's SQL must order them the same way across batches whatever the database's
    collation (`en_US.utf8` in the official image sorts `evt_a` after `evt_B`)."""
    import re
    from pathlib import Path

    from projectors.connect import store

    statements = [v for k, v in vars(store).items() if k.startswith("UPSERT_")]
    statements.append((Path(store.__file__).parent / "sql" / "views.sql").read_text())
    compared = 0
    for sql in statements:
        # Row comparisons `(a, b) > (c, d)` and ORDER BY lists.
        for group in re.findall(r"\(([^()]*)\)\s*[<>]\s*\(", sql) + re.findall(
            r"ORDER BY ([^)]*)\)", sql
        ):
            for item in group.split(","):
                if item.strip().split(" ")[0].endswith("_event_id"):
                    compared += 1
                    assert 'COLLATE "C"' in item, f"{item.strip()!r} in {sql[:80]!r}"
    assert compared >= 10
