"""The demo's final report as text: tables side by side with the simulation's expectation."""

from __future__ import annotations

from collections.abc import Sized
from datetime import UTC, datetime

from ingest.simulate.expected import Expected
from ingest.simulate.report import Actual, expected_as_actual


def _money(minor: int, currency: str = "") -> str:
    return f"{minor / 100:,.2f} {currency}".rstrip()


def _label(value: str | None) -> str:
    """A text cell; NULL (an invoice or price sent without a currency) reads as "-"."""
    return "-" if value is None else value


def _mark(ok: bool) -> str:
    return "ok" if ok else "MISMATCH"


def _none_if_empty(out: list[str], rows: Sized, what: str) -> None:
    """A table without rows says so (under its header, an empty table reads as a fault)."""
    if not rows:
        out.append(f"  (none: {what} this month)")


def render(
    expected: Expected,
    actual: Actual,
    *,
    accepted: int,
    rejected: int,
    broken: int,
    lag: int,
    dead: int,
    receiver: dict[str, int] | None = None,
) -> str:
    """The report: each table with a mark saying whether it equals the expectation."""
    want = expected_as_actual(expected)
    out: list[str] = []
    out.append(f"\nSubscriptions by status  [{_mark(want.subscriptions == actual.subscriptions)}]")
    for status in sorted(set(want.subscriptions) | set(actual.subscriptions)):
        out.append(
            f"  {status:<14} {actual.subscriptions.get(status, 0):>7}"
            f"   (simulated {want.subscriptions.get(status, 0)})"
        )
    out.append(f"\nInvoices by status  [{_mark(want.invoices == actual.invoices)}]")
    out.append(
        f"  {'status':<14} {'cur':<4} {'count':>7} {'total':>14} {'paid':>14} {'remaining':>14}"
    )
    # Ordered by the printed labels: Python cannot order NULL (None) against a currency.
    invoices = sorted(actual.invoices.items(), key=lambda row: (row[0][0], _label(row[0][1])))
    for (status, currency), totals in invoices:
        out.append(
            f"  {status:<14} {_label(currency):<4} {totals.count:>7} {_money(totals.total):>14} "
            f"{_money(totals.amount_paid):>14} {_money(totals.amount_remaining):>14}"
        )
    out.append(f"\nMRR per currency  [{_mark(want.mrr == actual.mrr)}]")
    for currency, minor in sorted(actual.mrr.items(), key=lambda row: _label(row[0])):
        out.append(f"  {_label(currency):<6} {_money(minor):>16}")
    ok = sorted(want.discrepancies) == sorted(actual.discrepancies)
    out.append(f"\nUsage discrepancies (projections.usage_discrepancies)  [{_mark(ok)}]")
    out.append(
        f"  {'customer':<22} {'period start':<17} {'reported':>9} {'rejected':>9} "
        f"{'billed':>7} {'delta':>6}  status"
    )
    for customer, start, reported, rejected_value, billed, delta, status in actual.discrepancies:
        when = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d %H:%M")
        unnamed = actual.unattributed.get((customer, start), 0)
        note = f" ({unnamed} rejected unnamed)" if unnamed else ""
        out.append(
            f"  {customer:<22} {when:<17} {reported:>9} {rejected_value:>9} "
            f"{billed:>7} {delta:>6}  {status}{note}"
        )
    _none_if_empty(out, actual.discrepancies, "no period billed other than reported")
    if actual.unattributed:
        out.append(
            "  (rejected unnamed: errors Stripe's error reports counted for the meter beyond "
            "the samples they list; part of such a row's delta may be those, not unbilled "
            "usage)"
        )
    ok = sorted(want.credited) == sorted(actual.credited)
    out.append(f"\nUsage credited back by credit notes (meter_reconciliation)  [{_mark(ok)}]")
    out.append(
        f"  {'customer':<22} {'period start':<17} {'billed':>7} {'credited':>9} "
        f"{'delta':>6}  status"
    )
    for customer, start, billed, credited, delta, status in sorted(actual.credited):
        when = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d %H:%M")
        out.append(f"  {customer:<22} {when:<17} {billed:>7} {credited:>9} {delta:>6}  {status}")
    _none_if_empty(out, actual.credited, "no credit note gave usage back")
    out.append(f"\nConnect balances per account  [{_mark(want.balances == actual.balances)}]")
    out.append(
        f"  {'account':<22} {'cur':<4} {'transferred':>12} {'reversed':>10} "
        f"{'fees':>9} {'fee refunds':>12} {'paid out':>10} {'net':>12}"
    )
    for (account, currency), values in sorted(actual.balances.items()):
        cells = " ".join(
            f"{_money(v):>{w}}" for v, w in zip(values, (12, 10, 9, 12, 10, 12), strict=True)
        )
        out.append(f"  {account:<22} {currency:<4} {cells}")
    out.append("\nReceiver")
    out.append(
        f"  accepted {accepted} deliveries of {expected.events} distinct events "
        f"(duplicates and retries included); rejected {rejected} forged; "
        f"{broken} broke off mid-body and were retried"
    )
    if receiver is not None:
        counted = ", ".join(f"{outcome} {n}" for outcome, n in sorted(receiver.items()))
        out.append(f"  the receiver's own count (GET /metrics): {counted or 'nothing'}")
    out.append(
        f"  projections.events holds {actual.events} events  "
        f"[{_mark(actual.events == expected.events)}]"
    )
    out.append("\nRow by row (each object's columns, both API versions' shapes)")
    for table, rows in want.objects.items():
        ok = rows == actual.objects.get(table, [])
        out.append(f"  {table:<20} {len(rows):>7} rows  [{_mark(ok)}]")
    out.append(f"\nProjectors: lag {lag} record(s), {dead} dead letter(s)")
    return "\n".join(out)
