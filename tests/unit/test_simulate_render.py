"""The simulation's text report (`lattice simulate --check`), pure."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ingest.simulate.expected import InvoiceTotals
from ingest.simulate.generator import generate
from ingest.simulate.render import render
from ingest.simulate.report import expected_as_actual


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
