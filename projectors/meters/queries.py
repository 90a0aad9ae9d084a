"""The meters store's SQL. Every statement takes whole columns as arrays (one round trip
per table per batch) and merges so that any order of arrival gives the same rows:
snapshots win by (created, rank, event id); facts merge by rules that commute."""

from __future__ import annotations

UPSERT_METERS = """
INSERT INTO meters AS t (id, event_name, display_name, status, aggregation,
                         last_event_id, last_event_created, event_time_window)
SELECT id, e, d, s, a, ev, to_timestamp(cr), w
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::bigint[], $8::text[]) AS u(id, e, d, s, a, ev, cr, w)
ON CONFLICT (id) DO UPDATE SET
    event_name = excluded.event_name, display_name = excluded.display_name,
    status = excluded.status, aggregation = excluded.aggregation,
    event_time_window = excluded.event_time_window,
    last_event_id = excluded.last_event_id, last_event_created = excluded.last_event_created
WHERE (excluded.last_event_created, excluded.last_event_id COLLATE "C")
    > (t.last_event_created, t.last_event_id COLLATE "C")
"""

# Returns the prices whose meter is new or changed: only those move reconciliation rows
# (every subscription event names its prices again; recomputing every customer on each
# of them would rescan all their usage, batch after batch). `before` is read in the
# statement's snapshot, before the upsert.
UPSERT_PRICES = """
WITH before AS (
    SELECT price, meter FROM meter_prices WHERE price = ANY($1::text[])
), upserted AS (
    INSERT INTO meter_prices AS t (price, meter, last_event_id, last_event_created)
    SELECT p, m, ev, to_timestamp(cr)
    FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS u(p, m, ev, cr)
    ON CONFLICT (price) DO UPDATE SET
        meter = excluded.meter,
        last_event_id = excluded.last_event_id,
        last_event_created = excluded.last_event_created
    WHERE (excluded.last_event_created, excluded.last_event_id COLLATE "C")
        > (t.last_event_created, t.last_event_id COLLATE "C")
    RETURNING price, meter
)
SELECT u.price FROM upserted u LEFT JOIN before b ON b.price = u.price
WHERE b.meter IS DISTINCT FROM u.meter
"""

UPSERT_PERIODS = """
INSERT INTO meter_periods AS t (customer, price, period_start, period_end,
                                last_event_id, last_event_created, ended, subscription)
SELECT c, p, to_timestamp(s), to_timestamp(e), ev, to_timestamp(cr), ended, sub
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::bigint[],
            $7::boolean[], $8::text[])
    AS u(c, p, s, e, ev, cr, ended, sub)
ON CONFLICT (customer, price, period_start) DO UPDATE SET
    period_end = CASE WHEN (excluded.ended, excluded.last_event_created,
                            excluded.last_event_id COLLATE "C")
                           > (t.ended, t.last_event_created, t.last_event_id COLLATE "C")
                      THEN excluded.period_end ELSE t.period_end END,
    subscription = CASE WHEN (excluded.ended, excluded.last_event_created,
                              excluded.last_event_id COLLATE "C")
                             > (t.ended, t.last_event_created, t.last_event_id COLLATE "C")
                        THEN excluded.subscription ELSE t.subscription END,
    ended = t.ended OR excluded.ended,
    last_event_id = CASE WHEN (excluded.last_event_created, excluded.last_event_id COLLATE "C")
                              > (t.last_event_created, t.last_event_id COLLATE "C")
                         THEN excluded.last_event_id ELSE t.last_event_id END,
    last_event_created = greatest(t.last_event_created, excluded.last_event_created)
WHERE (excluded.ended, excluded.last_event_created, excluded.last_event_id COLLATE "C")
        > (t.ended, t.last_event_created, t.last_event_id COLLATE "C")
    OR (excluded.last_event_created, excluded.last_event_id COLLATE "C")
        > (t.last_event_created, t.last_event_id COLLATE "C")
"""

UPSERT_INVOICES = """
INSERT INTO meter_invoices AS t (id, customer, status, rank, last_event_id, last_event_created,
                                 lines_complete, period_start, period_end)
SELECT id, c, s, r, ev, to_timestamp(cr), lc, to_timestamp(ps), to_timestamp(pe)
FROM unnest($1::text[], $2::text[], $3::text[], $4::integer[], $5::text[], $6::bigint[],
            $7::boolean[], $8::bigint[], $9::bigint[])
    AS u(id, c, s, r, ev, cr, lc, ps, pe)
ON CONFLICT (id) DO UPDATE SET
    customer = excluded.customer, status = excluded.status, rank = excluded.rank,
    last_event_id = excluded.last_event_id, last_event_created = excluded.last_event_created,
    lines_complete = excluded.lines_complete, period_start = excluded.period_start,
    period_end = excluded.period_end
WHERE (excluded.last_event_created, excluded.rank, excluded.last_event_id COLLATE "C")
    > (t.last_event_created, t.rank, t.last_event_id COLLATE "C")
"""

UPSERT_LINES = """
INSERT INTO meter_invoice_lines AS t (invoice, line, customer, price, quantity, period_start,
                                      period_end, rank, last_event_id, last_event_created,
                                      amount)
SELECT inv, l, c, p, q, to_timestamp(s), to_timestamp(e), r, ev, to_timestamp(cr), a
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::numeric[], $6::bigint[],
            $7::bigint[], $8::integer[], $9::text[], $10::bigint[], $11::bigint[])
    AS u(inv, l, c, p, q, s, e, r, ev, cr, a)
ON CONFLICT (invoice, line) DO UPDATE SET
    customer = excluded.customer, price = excluded.price, quantity = excluded.quantity,
    amount = excluded.amount,
    period_start = excluded.period_start, period_end = excluded.period_end,
    rank = excluded.rank,
    last_event_id = excluded.last_event_id, last_event_created = excluded.last_event_created
WHERE (excluded.last_event_created, excluded.rank, excluded.last_event_id COLLATE "C")
    > (t.last_event_created, t.rank, t.last_event_id COLLATE "C")
"""

# `voided` is final: once any snapshot says so it stays, whatever arrives after it; and
# so is `lines_complete`, once a snapshot carried every line (they never change).
UPSERT_CREDIT_NOTES = """
INSERT INTO meter_credit_notes AS t (id, invoice, customer, voided, last_event_id,
                                     last_event_created, lines_complete)
SELECT id, inv, c, v, ev, to_timestamp(cr), lc
FROM unnest($1::text[], $2::text[], $3::text[], $4::boolean[], $5::text[], $6::bigint[],
            $7::boolean[])
    AS u(id, inv, c, v, ev, cr, lc)
ON CONFLICT (id) DO UPDATE SET
    voided = t.voided OR excluded.voided,
    lines_complete = t.lines_complete OR excluded.lines_complete,
    last_event_id = CASE WHEN (excluded.last_event_created, excluded.last_event_id COLLATE "C")
                            > (t.last_event_created, t.last_event_id COLLATE "C")
                         THEN excluded.last_event_id ELSE t.last_event_id END,
    last_event_created = greatest(t.last_event_created, excluded.last_event_created)
WHERE (excluded.last_event_created, excluded.last_event_id COLLATE "C")
    > (t.last_event_created, t.last_event_id COLLATE "C")
   OR (excluded.voided AND NOT t.voided)
   OR (excluded.lines_complete AND NOT t.lines_complete)
"""

# A credit note's lines are fixed when it is issued: every copy says the same, and the row
# names the earliest event that showed it (a row written before amounts were kept takes
# the amount of the next copy).
INSERT_CREDIT_NOTE_LINES = """
INSERT INTO meter_credit_note_lines AS t (credit_note, line, invoice, invoice_line, quantity,
                                          amount, last_event_id, last_event_created)
SELECT cn, l, inv, il, q, a, ev, to_timestamp(cr)
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::numeric[], $6::bigint[],
            $7::text[], $8::bigint[])
    AS u(cn, l, inv, il, q, a, ev, cr)
ON CONFLICT (credit_note, line) DO UPDATE SET
    amount = coalesce(t.amount, excluded.amount),
    last_event_id = CASE WHEN (excluded.last_event_created, excluded.last_event_id COLLATE "C")
                            < (t.last_event_created, t.last_event_id COLLATE "C")
                         THEN excluded.last_event_id ELSE t.last_event_id END,
    last_event_created = least(t.last_event_created, excluded.last_event_created)
WHERE (t.amount IS NULL AND excluded.amount IS NOT NULL)
   OR (excluded.last_event_created, excluded.last_event_id COLLATE "C")
    < (t.last_event_created, t.last_event_id COLLATE "C")
"""

UPSERT_REJECTIONS = """
INSERT INTO meter_rejections AS t (identifier, code, message, last_event_id, last_event_created)
SELECT i, c, m, ev, to_timestamp(cr)
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[]) AS u(i, c, m, ev, cr)
ON CONFLICT (identifier) DO UPDATE SET
    code = excluded.code, message = excluded.message,
    last_event_id = excluded.last_event_id, last_event_created = excluded.last_event_created
WHERE (excluded.last_event_created, excluded.last_event_id COLLATE "C")
    > (t.last_event_created, t.last_event_id COLLATE "C")
"""

INSERT_ERROR_REPORTS = """
INSERT INTO meter_error_reports (event_id, type, meter, error_count, sampled_count,
                                 validation_start, validation_end, summary,
                                 last_event_id, last_event_created)
SELECT ev, ty, m, n, s, to_timestamp(vs), to_timestamp(ve), su, ev, to_timestamp(cr)
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[],
            $7::bigint[], $8::text[], $9::bigint[]) AS u(ev, ty, m, n, s, vs, ve, su, cr)
ON CONFLICT (event_id) DO NOTHING
"""

# A new error report changes only the count of unattributed rejections of the rows whose
# period its validation window overlaps: the same sum RECOMPUTE takes, without rebuilding
# every row of the meter. $1: the reports' event ids.
UPDATE_UNATTRIBUTED = """
UPDATE meter_reconciliation r SET unattributed_rejections = (
    SELECT coalesce(sum(e.unsampled_count), 0) FROM meter_error_reports e
    WHERE e.meter = r.meter
      AND e.validation_start < r.period_end AND e.validation_end > r.period_start
)
WHERE EXISTS (
    SELECT 1 FROM meter_error_reports e
    WHERE e.event_id = ANY($1::text[]) AND e.meter = r.meter
      AND e.validation_start < r.period_end AND e.validation_end > r.period_start
)
"""
