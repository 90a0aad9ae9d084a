"""The hot path's SQL: one statement per batch writes the usage facts and counts the plain
additions into the reconciliation rows that already exist.

Everything else a fact can do (a cancel, a different winning version, a fact of a `last`
meter or of a pre-aggregated one, a fact whose row does not exist yet) is returned to the
store, which has RECOMPUTE rebuild those rows from the tables. All CTEs read one
snapshot: `old` sees the facts as they were before `up` wrote, and `counted` runs even
though nothing reads it.
"""

from __future__ import annotations

# The winning version of a fact: a report beats a cancel-only row; between two of a kind
# the earliest (time, value, event name, customer) wins, as Stripe keeps one per identifier.
# `cancelled` and `reported` only ever become true, so the merge commutes.
_TAKES = """(excluded.reported, t.occurred_at, t.value,
     t.event_name COLLATE "C", t.customer COLLATE "C")
    > (t.reported, excluded.occurred_at, excluded.value,
       excluded.event_name COLLATE "C", excluded.customer COLLATE "C")"""

# $1..$8: identifier, event name, customer, value, Unix seconds, reported?, cancelled?,
# Unix seconds the record reached the log
# The values come as decimal text: asyncpg's binary numeric encoding cost the client three
# times what sending text and casting here does, for the same numbers.
# Returns (kind, customer, event_name): `added` pairs of `last` and pre-aggregated meters
# (RECOMPUTE them)
# and `changed` pairs (RECOMPUTE where the fact was and where it is now).
WRITE_FACTS = f"""
WITH batch AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]::numeric[], $5::bigint[],
                         $6::boolean[], $7::boolean[], $8::bigint[]) AS u(i, e, c, v, ts, r, x, rc)
),
old AS (
    SELECT f.identifier, f.customer, f.event_name, f.value, f.occurred_at, f.received_at,
           f.reported AND NOT f.cancelled AS live,
           least(f.occurred_at, coalesce(f.received_at, f.occurred_at)) AS seen_at
    FROM usage_facts f WHERE f.identifier = ANY($1::text[])
),
up AS (
    INSERT INTO usage_facts AS t (identifier, event_name, customer, value, occurred_at,
                                  reported, cancelled, last_event_id, last_event_created,
                                  received_at)
    SELECT i, e, c, v, to_timestamp(ts), r, x, i, to_timestamp(ts), to_timestamp(rc) FROM batch
    ON CONFLICT (identifier) DO UPDATE SET
        event_name = CASE WHEN {_TAKES} THEN excluded.event_name ELSE t.event_name END,
        customer = CASE WHEN {_TAKES} THEN excluded.customer ELSE t.customer END,
        value = CASE WHEN {_TAKES} THEN excluded.value ELSE t.value END,
        occurred_at = CASE WHEN {_TAKES} THEN excluded.occurred_at ELSE t.occurred_at END,
        last_event_created = CASE WHEN {_TAKES} THEN excluded.occurred_at
                             ELSE t.last_event_created END,
        reported = t.reported OR excluded.reported,
        cancelled = t.cancelled OR excluded.cancelled,
        received_at = least(t.received_at, excluded.received_at)
    RETURNING identifier, customer, event_name, value, occurred_at, received_at,
              reported AND NOT cancelled AS live,
              -- Its time as the rows' newest: not past when it was reported.
              least(occurred_at, coalesce(received_at, occurred_at)) AS seen_at
),
states AS (
    SELECT up.*, coalesce(old.live, false) AS was_live,
           -- `seen_at` too: an earlier report of a live fact moves its rows' newest event;
           -- and `received_at`, which orders a pre-aggregated meter's facts in a window.
           (old.customer, old.event_name, old.value, old.occurred_at, old.seen_at,
            old.received_at)
               IS NOT DISTINCT FROM (up.customer, up.event_name, up.value, up.occurred_at,
                                     up.seen_at, up.received_at) AS same,
           old.customer AS old_customer, old.event_name AS old_event_name
    FROM up LEFT JOIN old USING (identifier)
),
added AS (SELECT * FROM states WHERE live AND NOT was_live),
changed AS (
    -- Neither a duplicate, nor a fact that stays out of every total, nor a plain addition.
    SELECT * FROM states
    WHERE NOT (live = was_live AND (same OR NOT live)) AND NOT (live AND NOT was_live)
),
placed AS (
    SELECT r.customer, r.meter, r.period_start,
           count(*) AS n,
           count(rj.identifier) AS rejected_n,
           CASE m.aggregation WHEN 'sum' THEN sum(a.value) ELSE count(*) END AS reported,
           CASE m.aggregation
               WHEN 'sum' THEN coalesce(sum(a.value) FILTER (WHERE rj.identifier IS NOT NULL), 0)
               ELSE count(rj.identifier) END AS rejected,
           max(a.seen_at) FILTER (WHERE rj.identifier IS NULL) AS kept_at,
           (array_agg(a.identifier ORDER BY a.seen_at DESC, a.identifier DESC)
               FILTER (WHERE rj.identifier IS NULL))[1] AS kept_id,
           max(rj.last_event_created) AS rejection_at,
           (array_agg(rj.last_event_id ORDER BY rj.last_event_created DESC,
                      rj.last_event_id DESC) FILTER (WHERE rj.identifier IS NOT NULL))[1]
               AS rejection_id
    FROM added a
    JOIN meters m ON m.event_name = a.event_name AND m.aggregation IN ('sum', 'count')
                 AND m.event_time_window IS NULL
    JOIN meter_reconciliation r ON r.customer = a.customer AND r.meter = m.id
         AND a.occurred_at >= r.period_start AND a.occurred_at < r.period_end
    LEFT JOIN meter_rejections rj ON rj.identifier = a.identifier
    GROUP BY r.customer, r.meter, r.period_start, m.aggregation
),
newest AS (
    -- Per row, the newest of what the added facts bring: the newest one Stripe kept, and
    -- the error report's event of one it rejected (as RECOMPUTE's candidates); none, and
    -- the row's own stays.
    SELECT *, greatest(kept_at, rejection_at) AS at,
           CASE WHEN rejection_at IS NULL THEN kept_id
                WHEN kept_at IS NULL THEN rejection_id
                WHEN (kept_at, kept_id) > (rejection_at, rejection_id) THEN kept_id
                ELSE rejection_id END AS id
    FROM placed
),
counted AS (
    UPDATE meter_reconciliation t SET
        reported_value = t.reported_value + p.reported,
        rejected_value = t.rejected_value + p.rejected,
        delta = t.reported_value + p.reported - t.rejected_value - p.rejected
                - (t.billed_quantity - t.credited_quantity),
        status = CASE WHEN t.status = 'incomplete' AND NOT t.unseen_credits THEN 'incomplete'
                      WHEN t.invoices = 0 THEN 'pending'
                      WHEN t.unseen_credits
                       AND t.reported_value + p.reported - t.rejected_value - p.rejected
                           <= t.billed_quantity - t.credited_quantity THEN 'incomplete'
                      WHEN t.reported_value + p.reported - t.rejected_value - p.rejected
                           = t.billed_quantity - t.credited_quantity THEN 'matched'
                      WHEN t.reported_value + p.reported - t.rejected_value - p.rejected
                           > t.billed_quantity - t.credited_quantity
                       AND t.reported_value + p.reported - t.rejected_value - p.rejected
                           <= t.billed_quantity THEN 'credited'
                      WHEN t.reported_value + p.reported - t.rejected_value - p.rejected
                           > t.billed_quantity - t.credited_quantity THEN 'under_billed'
                      ELSE 'over_billed' END,
        reported_facts = t.reported_facts + p.n,
        rejected_facts = t.rejected_facts + p.rejected_n,
        last_event_id = CASE WHEN (p.at, p.id) > (t.last_event_created, t.last_event_id)
                             THEN p.id ELSE t.last_event_id END,
        last_event_created = greatest(p.at, t.last_event_created)
    FROM newest p
    WHERE t.customer = p.customer AND t.meter = p.meter AND t.period_start = p.period_start
    RETURNING 1
)
SELECT 'added' AS kind, customer, event_name FROM added
WHERE event_name IN (SELECT event_name FROM meters
                     WHERE aggregation = 'last' OR event_time_window IS NOT NULL)
UNION
SELECT 'changed', customer, event_name FROM changed
UNION
SELECT 'changed', old_customer, old_event_name FROM changed WHERE old_customer IS NOT NULL
"""
