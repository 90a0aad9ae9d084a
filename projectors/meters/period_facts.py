"""The facts of a reconciliation row's period, and which of them count.

Most meters count every fact of the period. A meter fed pre-aggregated usage
(`event_time_window`: `hour` or `day`) is fed running totals, and Stripe keeps only the
newest meter event sent in each such window of a customer's usage ("Record usage for
billing": a newer event sent within the same window overwrites the previous one), so of
its facts only the one sent last in each window counts. RECOMPUTE (`recompute.py`)
aggregates `PERIOD_FACTS`; WRITE_FACTS leaves such meters' facts to it.
"""

from __future__ import annotations

# The order Stripe sees a pre-aggregated meter's events in, newest first: when the fact's
# first record reached the log (whole seconds), then its own time, then its identifier.
_SENT_LAST_FIRST = """coalesce(u.received_at, u.occurred_at) DESC, u.occurred_at DESC,
                         u.identifier COLLATE "C" DESC"""

# Every fact the row's period holds, with `counted` (it counts in `reported_value`) and
# `kept` (in what Stripe kept). A fact of a pre-aggregated meter (`event_time_window`)
# counts only if it is the one sent last in its hour or day (UTC) of the period, as Stripe
# keeps only the newest meter event sent in such a window, and is kept only if it is the
# one sent last of those Stripe did not reject. Each branch runs for its kind of meter
# alone (its condition on `m` is a one-time filter).
PERIOD_FACTS = f"""
            SELECT u.identifier, u.value, u.occurred_at, u.received_at,
                   r.identifier AS rejected, r.last_event_id AS rejection_event,
                   r.last_event_created AS rejection_at,
                   true AS counted, r.identifier IS NULL AS kept
            FROM usage_facts u LEFT JOIN meter_rejections r ON r.identifier = u.identifier
            WHERE m.event_time_window IS NULL
              AND u.customer = per.customer AND u.event_name = m.event_name
              AND u.occurred_at >= per.period_start AND u.occurred_at < per.period_end
              AND u.reported AND NOT u.cancelled
            UNION ALL
            SELECT u.identifier, u.value, u.occurred_at, u.received_at,
                   r.identifier, r.last_event_id, r.last_event_created,
                   row_number() OVER (
                       PARTITION BY date_trunc(m.event_time_window, u.occurred_at, 'UTC')
                       ORDER BY {_SENT_LAST_FIRST}) = 1,
                   r.identifier IS NULL AND row_number() OVER (
                       PARTITION BY date_trunc(m.event_time_window, u.occurred_at, 'UTC'),
                                    r.identifier IS NULL
                       ORDER BY {_SENT_LAST_FIRST}) = 1
            FROM usage_facts u LEFT JOIN meter_rejections r ON r.identifier = u.identifier
            WHERE m.event_time_window IS NOT NULL
              AND u.customer = per.customer AND u.event_name = m.event_name
              AND u.occurred_at >= per.period_start AND u.occurred_at < per.period_end
              AND u.reported AND NOT u.cancelled"""
