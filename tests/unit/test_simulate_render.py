"""The simulation's text report (`lattice simulate --check`), pure."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from ingest.simulate.expected import InvoiceTotals
from ingest.simulate.generator import generate
from ingest.simulate.render import render
from ingest.simulate.report import differences, expected_as_actual

REPO = Path(__file__).resolve().parents[2]


def test_a_null_currency_is_printed_as_a_dash_beside_real_ones() -> None:
    # An invoice or price event sent by hand without a currency: read_tables hands the
    # NULL through as None, next to rows that do have one.
    expected = generate(40, 3, seed=11).expected
    want = expected_as_actual(expected)
    assert want.invoices, "the simulation must give invoices to sort against"
    assert want.mrr, "the simulation must give MRR to sort against"
    null: Any = None
    status = min(status for status, _ in want.invoices)
    stray = InvoiceTotals(count=1, total=1234, amount_paid=0, amount_remaining=1234)
    actual = replace(
        want,
        invoices={**want.invoices, (status, null): stray},
        mrr={**want.mrr, null: 500},
    )

    rows = [
        line.split()
        for line in render(
            expected, actual, accepted=0, rejected=0, broken=0, lag=0, dead=0
        ).splitlines()
    ]

    assert [status, "-", "1", "12.34", "0.00", "12.34"] in rows
    assert ["-", "5.00"] in rows
    assert ["Invoices", "by", "status", "[MISMATCH]"] in rows


def test_a_table_without_rows_says_so_under_its_header() -> None:
    expected = generate(40, 3, seed=11).expected
    want = expected_as_actual(expected)
    actual = replace(want, discrepancies=[], credited=[])

    text = render(expected, actual, accepted=0, rejected=0, broken=0, lag=0, dead=0)

    lines = text.splitlines()
    credited = lines.index(
        next(line for line in lines if line.startswith("Usage credited back by credit notes"))
    )
    assert lines[credited + 2] == "  (none: no credit note gave usage back this month)"
    assert "  (none: no period billed other than reported this month)" in lines


def test_the_demos_month_shows_every_kind_of_usage_row() -> None:
    # `make demo` is a newcomer's first sight of the usage tables: its default month must
    # hold a period of each status and usage given back by a credit note, not a lone
    # header (the seed of 2026 drew no credit note in ten paid usage lines).
    script = (REPO / "deploy" / "demo.sh").read_text()
    defaults = dict(re.findall(r'"\$\{DEMO_(CUSTOMERS|ACCOUNTS|SEED):-(\d+)\}"', script))
    assert set(defaults) == {"CUSTOMERS", "ACCOUNTS", "SEED"}

    expected = generate(
        int(defaults["CUSTOMERS"]), int(defaults["ACCOUNTS"]), seed=int(defaults["SEED"])
    ).expected

    shown = {row.status for row in expected.discrepancies}
    assert {"under_billed", "over_billed", "unbilled"} <= shown
    assert {row.status for row in expected.credited} >= {"credited"}


def test_a_row_that_differs_is_marked_and_named_even_where_totals_agree() -> None:
    """One subscription's period read wrongly (a projection missing basil's item periods):
    the totals agree, its table is marked, and `differences` names that row."""
    expected = generate(40, 3, seed=11).expected
    want = expected_as_actual(expected)
    first, *rest = want.objects["subscriptions"]
    wrong = (*first[:4], None, *first[5:])  # current_period_end lost
    actual = replace(want, objects={**want.objects, "subscriptions": [wrong, *rest]})

    text = render(expected, actual, accepted=0, rejected=0, broken=0, lag=0, dead=0)
    rows = [line.split() for line in text.splitlines()]
    found = differences(expected, actual)

    assert ["subscriptions", str(len(rest) + 1), "rows", "[MISMATCH]"] in rows
    assert ["invoices", str(len(want.objects["invoices"])), "rows", "[ok]"] in rows
    assert found == [f"subscriptions {first[0]}: expected {first}, table has {wrong}"]


def test_rows_that_differ_are_shown_a_few_per_table() -> None:
    expected = generate(40, 3, seed=11).expected
    want = expected_as_actual(expected)
    lines = want.objects["invoice_lines"]
    assert len(lines) > 5
    actual = replace(want, objects={**want.objects, "invoice_lines": []})

    found = differences(expected, actual)

    assert len(found) == 4
    assert found[-1] == f"invoice_lines: {len(lines) - 3} more rows differ"


def test_a_discrepancy_with_unnamed_rejections_says_so_beside_it() -> None:
    """An `under_billed` row whose meter had errors no report sample names: part of its
    delta may be those. The report says so on the row, and once what it means."""
    expected = generate(40, 3, seed=11).expected
    want = expected_as_actual(expected)
    assert want.discrepancies, "the simulation must give a discrepancy to annotate"
    customer, start, *_ = want.discrepancies[0]
    actual = replace(want, unattributed={(customer, start): 2})

    lines = render(expected, actual, accepted=0, rejected=0, broken=0, lag=0, dead=0).splitlines()

    marked = [line for line in lines if line.endswith("(2 rejected unnamed)")]
    assert len(marked) == 1
    assert marked[0].split()[0] == customer
    assert sum(line.startswith("  (rejected unnamed:") for line in lines) == 1
    plain = render(expected, want, accepted=0, rejected=0, broken=0, lag=0, dead=0)
    assert "rejected unnamed" not in plain
