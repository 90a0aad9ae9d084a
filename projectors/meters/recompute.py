"""Recomputing `meter_reconciliation` rows from the input tables, in SQL.

A batch names what it touched (customers and event names of facts, meters, prices,
customers of periods and invoices, rejected identifiers); every (customer, meter) pair
those reach has all its periods recomputed from scratch. The rows are a function of the
input tables alone, so the order records arrived in cannot show in them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import asyncpg

from projectors.meters.period_facts import PERIOD_FACTS

# $1/$2 customers and event names of changed facts; $3 meters; $4 prices; $5 customers of
# periods and invoices; $6 identifiers of rejected facts; $7/$8 customers and event names
# of facts just added (ADD_FACTS counted them already, except for `last` meters and
# pre-aggregated ones).
RECOMPUTE = f"""
WITH touched AS (
    SELECT c AS customer, e AS event_name FROM unnest($1::text[], $2::text[]) AS u(c, e)
    UNION
    SELECT customer, event_name FROM usage_facts WHERE identifier = ANY($6::text[])
),
pairs AS (
    SELECT t.customer, m.id AS meter FROM touched t JOIN meters m ON m.event_name = t.event_name
    UNION
    SELECT a.c, m.id FROM unnest($7::text[], $8::text[]) AS a(c, e)
    JOIN meters m ON m.event_name = a.e
                 AND (m.aggregation = 'last' OR m.event_time_window IS NOT NULL)
    UNION
    SELECT p.customer, mp.meter FROM meter_prices mp JOIN meter_periods p ON p.price = mp.price
    WHERE mp.meter = ANY($3::text[]) OR mp.price = ANY($4::text[])
    UNION
    SELECT p.customer, mp.meter FROM meter_periods p JOIN meter_prices mp ON mp.price = p.price
    WHERE p.customer = ANY($5::text[])
),
-- A period ends where the next period of its subscription and meter begins: a price
-- changed or a billing cycle reset mid-period leaves the first snapshot's period running
-- to its old end, over the one that replaced it (each fact counts in one row). Another
-- subscription's periods do not cut it: Stripe bills the meter's usage on each.
periods AS (
    SELECT customer, meter, period_start, max(period_end) AS period_end,
           (array_agg(event_id ORDER BY event_at DESC, event_id DESC))[1] AS event_id,
           max(event_at) AS event_at
    FROM (
        SELECT customer, meter, period_start, event_id, event_at,
               CASE WHEN subscription IS NULL THEN period_end
                    ELSE least(period_end, lead(period_start) OVER (
                        PARTITION BY customer, meter, subscription ORDER BY period_start))
               END AS period_end
        FROM (
            SELECT a.customer, a.meter, p.subscription, p.period_start,
                   -- An ended subscription's period ends with it, whatever its prices: the
                   -- price swapped out before the cancellation kept its uncut end. Rows
                   -- of no known subscription (older ones) are not one subscription's.
                   coalesce(min(p.period_end) FILTER (WHERE p.ended
                                                      AND p.subscription IS NOT NULL),
                            max(p.period_end))
                       AS period_end,
                   (array_agg(p.last_event_id ORDER BY p.last_event_created DESC,
                              p.last_event_id DESC))[1] AS event_id,
                   max(p.last_event_created) AS event_at
            FROM pairs a
            JOIN meter_prices mp ON mp.meter = a.meter
            JOIN meter_periods p ON p.customer = a.customer AND p.price = mp.price
            GROUP BY a.customer, a.meter, p.subscription, p.period_start
        ) by_subscription
    ) capped
    GROUP BY customer, meter, period_start
),
computed AS (
    SELECT per.customer, per.meter, per.period_start, m.event_name, per.period_end,
           m.aggregation,
           CASE m.aggregation WHEN 'sum' THEN f.total WHEN 'count' THEN f.n::numeric
                ELSE coalesce(lf.value, f.last_counted, 0) END AS reported,
           -- Without a window, what was not rejected is what the incremental path counts
           -- (total less rejected: the same numeric scale, whatever the order).
           CASE WHEN m.aggregation = 'sum' AND m.event_time_window IS NULL
                    THEN f.total - f.rejected_total
                WHEN m.aggregation = 'sum' THEN f.kept_total
                WHEN m.aggregation = 'count' THEN f.kept_n::numeric
                ELSE coalesce(la.value, f.last_kept, 0) END AS accepted,
           b.billed, cr.credited, cr.amount_credits, b.billed - cr.credited AS net,
           b.invoices, inc.incomplete, cr.unseen, f.n, f.rejected_n, e.unattributed,
           le.id AS last_event_id, le.at AS last_event_created
    FROM periods per
    JOIN meters m ON m.id = per.meter
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE w.counted) AS n,
               coalesce(sum(w.value) FILTER (WHERE w.counted), 0) AS total,
               count(w.rejected) FILTER (WHERE w.counted) AS rejected_n,
               coalesce(sum(w.value) FILTER (WHERE w.counted AND w.rejected IS NOT NULL), 0)
                   AS rejected_total,
               count(*) FILTER (WHERE w.kept) AS kept_n,
               coalesce(sum(w.value) FILTER (WHERE w.kept), 0) AS kept_total,
               -- A pre-aggregated `last` meter's: the newest (by its time) that counts.
               (array_agg(w.value ORDER BY w.occurred_at DESC, w.identifier DESC)
                   FILTER (WHERE w.counted AND m.aggregation = 'last'
                                AND m.event_time_window IS NOT NULL))[1] AS last_counted,
               (array_agg(w.value ORDER BY w.occurred_at DESC, w.identifier DESC)
                   FILTER (WHERE w.kept AND m.aggregation = 'last'
                                AND m.event_time_window IS NOT NULL))[1] AS last_kept,
               (array_agg(w.rejection_event ORDER BY w.rejection_at DESC,
                          w.rejection_event DESC) FILTER (WHERE w.rejected IS NOT NULL))[1]
                   AS rejection_id,
               max(w.rejection_at) AS rejection_at,
               -- The newest fact Stripe kept: a rejected one (its time may be the app's
               -- mistake, days ahead) is reflected by its error report's event instead;
               -- a fact's time, never past when it was reported (as WRITE_FACTS).
               (array_agg(w.identifier ORDER BY least(w.occurred_at,
                                                      coalesce(w.received_at, w.occurred_at))
                                                DESC, w.identifier DESC)
                   FILTER (WHERE w.rejected IS NULL))[1] AS kept_id,
               max(least(w.occurred_at, coalesce(w.received_at, w.occurred_at)))
                   FILTER (WHERE w.rejected IS NULL) AS kept_at
        FROM ({PERIOD_FACTS}
        ) w
    ) f
    LEFT JOIN LATERAL (
        -- The last value of a meter not pre-aggregated (those are in `f`).
        SELECT u.value FROM usage_facts u
        WHERE m.event_time_window IS NULL
          AND u.customer = per.customer AND u.event_name = m.event_name
          AND u.occurred_at >= per.period_start AND u.occurred_at < per.period_end
          AND u.reported AND NOT u.cancelled
        ORDER BY u.occurred_at DESC, u.identifier DESC LIMIT 1
    ) lf ON true
    LEFT JOIN LATERAL (
        -- The last accepted value, only needed by `last` meters not pre-aggregated.
        SELECT u.value FROM usage_facts u
        WHERE m.aggregation = 'last' AND m.event_time_window IS NULL
          AND u.customer = per.customer AND u.event_name = m.event_name
          AND u.occurred_at >= per.period_start AND u.occurred_at < per.period_end
          AND u.reported AND NOT u.cancelled
          AND NOT EXISTS (SELECT 1 FROM meter_rejections r WHERE r.identifier = u.identifier)
        ORDER BY u.occurred_at DESC, u.identifier DESC LIMIT 1
    ) la ON true
    CROSS JOIN LATERAL (
        -- Lines of finalized invoices, each counted in its invoice's newest snapshot only.
        -- A voided invoice closes its period too, with nothing billed: usage Stripe
        -- invoiced and then voided is not billed unless another invoice bills it.
        SELECT coalesce(sum(l.quantity) FILTER (WHERE i.status <> 'void'), 0) AS billed,
               count(DISTINCT i.id) AS invoices,
               count(DISTINCT i.id) FILTER (WHERE i.status <> 'void') AS billing,
               (array_agg(i.last_event_id ORDER BY i.last_event_created DESC,
                          i.last_event_id DESC))[1] AS invoice_event_id,
               max(i.last_event_created) AS invoice_event_at
        FROM meter_prices mp
        JOIN meter_invoice_lines l ON l.price = mp.price AND l.customer = per.customer
                                  AND l.period_start = per.period_start
        JOIN meter_invoices i ON i.id = l.invoice AND i.last_event_id = l.last_event_id
        WHERE mp.meter = per.meter AND i.status IN ('open', 'paid', 'uncollectible', 'void')
    ) b
    CROSS JOIN LATERAL (
        -- Units credited back by credit notes still issued, on the lines `b` bills (its
        -- invoice's newest snapshot, not void). A credit of an amount is not units: it is
        -- counted apart, as a warning that `delta` leaves it out. A note on such an
        -- invoice whose body did not carry every line (`lines.has_more`) may credit a
        -- line not seen (`unseen`): credits only lower `net`, so a period billed less
        -- than used stays judged, and one billed at least as much cannot be.
        SELECT coalesce(sum(cl.quantity) FILTER (WHERE NOT cn.voided AND u.by_units), 0)
                   AS credited,
               count(cl.line) FILTER (WHERE NOT cn.voided AND NOT u.by_units)
                   AS amount_credits,
               coalesce(bool_or(NOT cn.voided AND NOT cn.lines_complete), false) AS unseen,
               (array_agg(cn.last_event_id ORDER BY cn.last_event_created DESC,
                          cn.last_event_id DESC)
                    FILTER (WHERE cl.line IS NOT NULL OR NOT cn.lines_complete))[1]
                   AS credit_event_id,
               max(cn.last_event_created)
                   FILTER (WHERE cl.line IS NOT NULL OR NOT cn.lines_complete)
                   AS credit_event_at
        FROM meter_prices mp
        JOIN meter_invoice_lines l ON l.price = mp.price AND l.customer = per.customer
                                  AND l.period_start = per.period_start
        JOIN meter_invoices i ON i.id = l.invoice AND i.last_event_id = l.last_event_id
        JOIN meter_credit_notes cn ON cn.invoice = l.invoice
        LEFT JOIN meter_credit_note_lines cl ON cl.credit_note = cn.id
                                            AND cl.invoice = l.invoice
                                            AND cl.invoice_line = l.line
        -- Units when its amount is what `quantity` units cost on the line, to the cent
        -- (Stripe rounds each); Stripe shows a quantity on a credit made by amount too.
        -- Without amounts to compare (rows kept before them, a line billed 0), units.
        CROSS JOIN LATERAL (
            SELECT cl.quantity IS NOT NULL
                   AND (cl.amount IS NULL OR l.amount IS NULL OR l.amount = 0
                        OR l.quantity <= 0
                        OR abs(cl.amount * l.quantity - cl.quantity * l.amount) <= l.quantity)
                   AS by_units
        ) u
        WHERE mp.meter = per.meter AND i.status IN ('open', 'paid', 'uncollectible')
    ) cr
    CROSS JOIN LATERAL (
        -- No metered line of the period seen on an invoice that bills it (a voided one
        -- does not), and a finalized invoice of the customer for this period whose body
        -- did not carry every line (`lines.has_more`): the line may be one not seen.
        -- Once a billing line is seen, the period is judged.
        SELECT b.billing = 0 AND EXISTS (
            SELECT 1 FROM meter_invoices i
            WHERE i.customer = per.customer AND NOT i.lines_complete
              AND i.status IN ('open', 'paid', 'uncollectible')
              AND i.period_start < per.period_end AND i.period_end > per.period_start
        ) AS incomplete
    ) inc
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(r.unsampled_count), 0) AS unattributed FROM meter_error_reports r
        WHERE r.meter = per.meter
          AND r.validation_start < per.period_end AND r.validation_end > per.period_start
    ) e
    CROSS JOIN LATERAL (
        SELECT c.id, c.at
        FROM (VALUES (per.event_id, per.event_at), (m.last_event_id, m.last_event_created),
                     (f.kept_id, f.kept_at), (f.rejection_id, f.rejection_at),
                     (b.invoice_event_id, b.invoice_event_at),
                     (cr.credit_event_id, cr.credit_event_at)) AS c(id, at)
        WHERE c.at IS NOT NULL
        ORDER BY c.at DESC, c.id DESC LIMIT 1
    ) le
)
INSERT INTO meter_reconciliation AS t (
    customer, meter, period_start, event_name, period_end, aggregation, reported_value,
    rejected_value, billed_quantity, delta, status, reported_facts, rejected_facts,
    unattributed_rejections, invoices, last_event_id, last_event_created, credited_quantity,
    amount_credits, unseen_credits)
SELECT customer, meter, period_start, event_name, period_end, aggregation, reported,
       reported - accepted, billed, accepted - net,
       CASE WHEN incomplete THEN 'incomplete'
            WHEN invoices = 0 THEN 'pending'
            WHEN unseen AND accepted <= net THEN 'incomplete'
            WHEN accepted = net THEN 'matched'
            WHEN accepted > net AND accepted <= billed THEN 'credited'
            WHEN accepted > net THEN 'under_billed'
            ELSE 'over_billed' END,
       n, rejected_n, unattributed, invoices, last_event_id, last_event_created, credited,
       amount_credits, unseen
FROM computed
ON CONFLICT (customer, meter, period_start) DO UPDATE SET
    event_name = excluded.event_name, period_end = excluded.period_end,
    aggregation = excluded.aggregation, reported_value = excluded.reported_value,
    rejected_value = excluded.rejected_value, billed_quantity = excluded.billed_quantity,
    delta = excluded.delta, status = excluded.status,
    reported_facts = excluded.reported_facts, rejected_facts = excluded.rejected_facts,
    unattributed_rejections = excluded.unattributed_rejections,
    invoices = excluded.invoices, last_event_id = excluded.last_event_id,
    last_event_created = excluded.last_event_created,
    credited_quantity = excluded.credited_quantity, amount_credits = excluded.amount_credits,
    unseen_credits = excluded.unseen_credits
WHERE (t.*) IS DISTINCT FROM (excluded.*)
"""


@dataclass
class Touched:
    """What one batch touched: the keys `RECOMPUTE` starts from."""

    facts: set[tuple[str, str]] = field(default_factory=set)
    added: set[tuple[str, str]] = field(default_factory=set)
    meters: set[str] = field(default_factory=set)
    prices: set[str] = field(default_factory=set)
    customers: set[str] = field(default_factory=set)
    rejected: set[str] = field(default_factory=set)

    def empty(self) -> bool:
        """True when the batch changed nothing a reconciliation row depends on."""
        return not (
            self.facts
            or self.added
            or self.meters
            or self.prices
            or self.customers
            or self.rejected
        )


async def recompute(conn: asyncpg.Connection, touched: Touched) -> None:
    """Recompute every reconciliation row the touched keys reach (caller's transaction)."""
    if touched.empty():
        return
    customers, event_names = _columns(touched.facts)
    added_customers, added_event_names = _columns(touched.added)
    await conn.execute(
        RECOMPUTE,
        customers,
        event_names,
        sorted(touched.meters),
        sorted(touched.prices),
        sorted(touched.customers),
        sorted(touched.rejected),
        added_customers,
        added_event_names,
    )


def _columns(pairs: Iterable[tuple[str, str]]) -> tuple[list[str], list[str]]:
    ordered = sorted(pairs)
    return [c for c, _ in ordered], [e for _, e in ordered]
