"""Write a batch of connect changes: one multi-row upsert per table, in the caller's
transaction. The batch is first merged in memory (`fold`), so each statement touches a row
once; the ON CONFLICT guards then apply the same rules against what earlier batches wrote.
Fee refunds and payouts are booked in the ledger from their tables, where a refund's fee
and a payout's paid/failed reports are known whatever order they arrived in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from datetime import datetime
from operator import attrgetter
from typing import Any, get_args, get_type_hints

import asyncpg

from projectors.connect import changes as c
from projectors.connect.fold import fold

# Event ids compare as bytes (`COLLATE "C"`), as `fold` compares them in Python: under
# the database's own collation (en_US in the official image) two snapshots of one second
# would be ordered one way within a batch and another way across batches.
_C = 'COLLATE "C"'
_STAMPS = (
    f"(excluded.last_event_created, excluded.last_event_id {_C})",
    f"(t.last_event_created, t.last_event_id {_C})",
)
_NEWER = f"{_STAMPS[0]} > {_STAMPS[1]}"
_EARLIER = f"{_STAMPS[0]} < {_STAMPS[1]}"
_RANKED_NEWER = (
    f"(excluded.status_rank, excluded.last_event_created, excluded.last_event_id {_C})"
    f" > (t.status_rank, t.last_event_created, t.last_event_id {_C})"
)
_GETTERS: dict[type, attrgetter[Any]] = {}
_PG_TYPES: dict[type, str] = {str: "text", int: "bigint", bool: "boolean", datetime: "timestamptz"}


def _columns(row_type: type) -> list[tuple[str, str]]:
    """(column, PostgreSQL type) of a change type's fields, in order."""
    hints = get_type_hints(row_type)
    out = []
    for f in fields(row_type):
        hint = hints[f.name]
        base = next((a for a in get_args(hint) if a is not type(None)), hint)
        out.append((f.name, _PG_TYPES[base]))
    return out


def _insert(table: str, row_type: type) -> tuple[str, list[str]]:
    """`INSERT INTO table AS t (...) SELECT * FROM unnest($1::type[], ...)`, and its columns."""
    cols = _columns(row_type)
    names = [name for name, _ in cols]
    arrays = ", ".join(f"${i}::{pg}[]" for i, (_, pg) in enumerate(cols, start=1))
    return f"INSERT INTO {table} AS t ({', '.join(names)}) SELECT * FROM unnest({arrays})", names


def _case(cond: str, column: str) -> str:
    return f"{column} = CASE WHEN {cond} THEN excluded.{column} ELSE t.{column} END"


def _snapshot_upsert(
    table: str, row_type: type, grows: Sequence[str], turns_on: Sequence[str]
) -> str:
    """Newest snapshot wins; `grows` columns take the greatest, `turns_on` ones are or-ed."""
    insert, names = _insert(table, row_type)
    sets = [_case(_NEWER, n) for n in names if n != "id" and n not in grows and n not in turns_on]
    sets += [f"{n} = GREATEST(t.{n}, excluded.{n})" for n in grows]
    sets += [f"{n} = t.{n} OR excluded.{n}" for n in turns_on]
    where = [_NEWER] + [f"excluded.{n} > t.{n}" for n in grows]
    where += [f"(excluded.{n} AND NOT t.{n})" for n in turns_on]
    return f"{insert} ON CONFLICT (id) DO UPDATE SET {', '.join(sets)} WHERE {' OR '.join(where)}"


def _earliest_upsert(table: str, row_type: type, key: str) -> str:
    """Rows that never change: keep the earliest event that reported them."""
    insert, names = _insert(table, row_type)
    sets = ", ".join(f"{n} = excluded.{n}" for n in names if n not in key.split(", "))
    return f"{insert} ON CONFLICT ({key}) DO UPDATE SET {sets} WHERE {_EARLIER}"


def _first_report(at: str, event: str) -> str:
    return (
        f"excluded.{at} IS NOT NULL AND (t.{at} IS NULL OR "
        f"(excluded.{at}, excluded.{event} {_C}) < (t.{at}, t.{event} {_C}))"
    )


def _payout_upsert() -> str:
    insert, names = _insert("connect_payouts", c.PayoutChange)
    reports = {"paid_at", "paid_event_id", "failed_at", "failed_event_id"}
    paid, failed = (
        _first_report("paid_at", "paid_event_id"),
        _first_report("failed_at", "failed_event_id"),
    )
    sets = [_case(_RANKED_NEWER, n) for n in names if n != "id" and n not in reports]
    sets += [_case(paid, "paid_at"), _case(paid, "paid_event_id")]
    sets += [_case(failed, "failed_at"), _case(failed, "failed_event_id")]
    where = " OR ".join(f"({w})" for w in (_RANKED_NEWER, paid, failed))
    return f"{insert} ON CONFLICT (id) DO UPDATE SET {', '.join(sets)} WHERE {where}"


_ACCOUNT_SNAPSHOT = [f.name for f in fields(c.AccountChange)][1:-2]
_N = len(fields(c.AccountChange))
# executemany, not unnest: requirement lists are ragged arrays, and accounts are few.
UPSERT_ACCOUNTS = f"""
INSERT INTO connect_accounts AS t
    (id, {", ".join(_ACCOUNT_SNAPSHOT)}, snapshot_event_id, snapshot_event_created,
     last_event_id, last_event_created)
VALUES ({", ".join(f"${i}" for i in range(1, _N + 1))}, ${_N - 1}, ${_N})
ON CONFLICT (id) DO UPDATE SET
    {", ".join(f"{n} = excluded.{n}" for n in _ACCOUNT_SNAPSHOT)},
    snapshot_event_id = excluded.snapshot_event_id,
    snapshot_event_created = excluded.snapshot_event_created,
    {_case(_NEWER, "last_event_id")}, {_case(_NEWER, "last_event_created")}
WHERE t.snapshot_event_created IS NULL
   OR (excluded.snapshot_event_created, excluded.snapshot_event_id {_C})
      > (t.snapshot_event_created, t.snapshot_event_id {_C})
"""
UPSERT_AUTHORIZATIONS = f"""
INSERT INTO connect_accounts AS t
    (id, deauthorized, application, authorization_event_id, authorization_event_created,
     last_event_id, last_event_created)
SELECT u.*, u.event_id, u.event_created
FROM unnest($1::text[], $2::boolean[], $3::text[], $4::text[], $5::timestamptz[])
    AS u(id, deauthorized, application, event_id, event_created)
ON CONFLICT (id) DO UPDATE SET
    deauthorized = excluded.deauthorized,
    application = coalesce(excluded.application, t.application),
    authorization_event_id = excluded.authorization_event_id,
    authorization_event_created = excluded.authorization_event_created,
    {_case(_NEWER, "last_event_id")}, {_case(_NEWER, "last_event_created")}
WHERE t.authorization_event_created IS NULL
   OR (excluded.authorization_event_created, excluded.authorization_event_id {_C})
      > (t.authorization_event_created, t.authorization_event_id {_C})
"""
UPSERT_TRANSFERS = _snapshot_upsert(
    "transfers", c.TransferChange, ["amount_reversed"], ["reversed"]
)
UPSERT_CHARGES = _snapshot_upsert(
    "connect_charges", c.ChargeChange, ["amount_captured", "amount_refunded"], ["refunded"]
)
UPSERT_FEES = _snapshot_upsert("application_fees", c.FeeChange, ["amount_refunded"], ["refunded"])
UPSERT_REVERSALS = _earliest_upsert("transfer_reversals", c.ReversalChange, "id")
UPSERT_FEE_REFUNDS = _earliest_upsert("application_fee_refunds", c.FeeRefundChange, "id")
UPSERT_PAYOUTS = _payout_upsert()

_LEDGER_INSERT = """
INSERT INTO connect_ledger AS t
    (kind, source_id, account, currency, amount, created, event_id, last_event_id,
     last_event_created)
"""
_LEDGER_CONFLICT = f"""
ON CONFLICT (kind, source_id) DO UPDATE SET
    account = excluded.account, currency = excluded.currency, amount = excluded.amount,
    created = excluded.created, event_id = excluded.event_id,
    last_event_id = excluded.last_event_id, last_event_created = excluded.last_event_created
WHERE {_EARLIER}
"""
UPSERT_LEDGER = f"""{_LEDGER_INSERT}
SELECT kind, source_id, account, currency, amount, created, last_event_id, last_event_id,
       last_event_created
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::timestamptz[],
            $7::text[], $8::timestamptz[])
    AS u(kind, source_id, account, currency, amount, created, last_event_id, last_event_created)
{_LEDGER_CONFLICT}"""
# A refund is booked once both it and its fee (which names the account) are known.
BOOK_FEE_REFUNDS = f"""{_LEDGER_INSERT}
SELECT 'fee_refund', r.id, f.account, r.currency, r.amount, r.created, r.last_event_id,
       r.last_event_id, r.last_event_created
FROM application_fee_refunds r JOIN application_fees f ON f.id = r.fee
WHERE r.id = ANY($1::text[]) OR r.fee = ANY($2::text[])
{_LEDGER_CONFLICT}"""
# Paid: money left the account. Failed after being paid: it came back.
BOOK_PAYOUTS = f"""{_LEDGER_INSERT}
SELECT 'payout', id, account, currency, -amount, paid_at, paid_event_id, paid_event_id, paid_at
FROM connect_payouts WHERE id = ANY($1::text[]) AND paid_event_id IS NOT NULL
UNION ALL
SELECT 'payout_failed', id, account, currency, amount, failed_at, failed_event_id,
       failed_event_id, failed_at
FROM connect_payouts
WHERE id = ANY($1::text[]) AND paid_event_id IS NOT NULL AND failed_event_id IS NOT NULL
{_LEDGER_CONFLICT}"""


# A fee and its refund's own event (`application_fee.refund.updated`, keyed by the `fr_`
# id) can sit on different partitions, so two consumers may write them at once; neither
# transaction would see the other's row and the refund would never be booked. Batches
# touching one fee take its lock first (in a sorted order, so they cannot deadlock).
LOCK_FEES = """
SELECT pg_advisory_xact_lock(hashtextextended('lattice.connect.fee:' || fee, 0))
FROM unnest($1::text[]) AS fee
"""


def _values(row: Any) -> tuple[Any, ...]:
    """A change's field values in column order (not `astuple`, which deep-copies each)."""
    getter = _GETTERS.get(type(row))
    if getter is None:
        getter = _GETTERS[type(row)] = attrgetter(*(f.name for f in fields(row)))
    values: tuple[Any, ...] = getter(row)
    return values


def _arrays(rows: Sequence[Any]) -> list[list[Any]]:
    """Column-wise lists of dataclass rows, for `unnest`."""
    return [list(column) for column in zip(*map(_values, rows), strict=True)]


def _account_args(account: c.AccountChange) -> tuple[Any, ...]:
    # Requirement lists are tuples in the change; asyncpg wants lists for arrays.
    return tuple(list(v) if isinstance(v, tuple) else v for v in _values(account))


async def _upsert(conn: asyncpg.Connection, sql: str, rows: Sequence[Any]) -> None:
    if rows:
        await conn.execute(sql, *_arrays(rows))


async def apply(conn: asyncpg.Connection, changes: Sequence[c.Change]) -> None:
    """Write a batch of changes; the caller owns the transaction and the search_path."""
    state = fold(changes)
    fees = sorted(set(state.fees) | {refund.fee for refund in state.fee_refunds.values()})
    if fees:
        await conn.execute(LOCK_FEES, fees)
    if state.accounts:
        await conn.executemany(UPSERT_ACCOUNTS, [_account_args(a) for a in state.accounts.values()])
    await _upsert(conn, UPSERT_AUTHORIZATIONS, list(state.authorizations.values()))
    await _upsert(conn, UPSERT_TRANSFERS, list(state.transfers.values()))
    await _upsert(conn, UPSERT_REVERSALS, list(state.reversals.values()))
    await _upsert(conn, UPSERT_CHARGES, list(state.charges.values()))
    await _upsert(conn, UPSERT_FEES, list(state.fees.values()))
    await _upsert(conn, UPSERT_FEE_REFUNDS, list(state.fee_refunds.values()))
    await _upsert(conn, UPSERT_PAYOUTS, list(state.payouts.values()))
    await _upsert(conn, UPSERT_LEDGER, list(state.entries.values()))
    if state.fee_refunds or state.fees:
        await conn.execute(BOOK_FEE_REFUNDS, list(state.fee_refunds), list(state.fees))
    if state.payouts:
        await conn.execute(BOOK_PAYOUTS, list(state.payouts))
