-- Closed periods (a finalized invoice exists) where billing differs from usage; and, as
-- `unbilled`, periods with usage Stripe kept and no finalized invoice at all that ended
-- over three days before the newest event or fact any row reflects (Stripe finalizes a
-- period's invoice about an hour after it ends, or up to 72 hours later while webhook
-- endpoints fail): a subscription canceled mid-period without `invoice_now`, or invoices
-- left as drafts. The log's clock, not the wall's: a replay or a month simulated in the
-- past reads the same. Largest first.
CREATE OR REPLACE VIEW usage_discrepancies AS
WITH log AS (SELECT max(last_event_created) AS newest FROM meter_reconciliation)
SELECT r.customer, r.meter, r.event_name, r.period_start, r.period_end,
       CASE r.status WHEN 'pending' THEN 'unbilled' ELSE r.status END AS status,
       r.reported_value, r.rejected_value, r.billed_quantity, r.delta,
       r.unattributed_rejections, r.last_event_id, r.last_event_created, r.credited_quantity,
       r.amount_credits
FROM meter_reconciliation r CROSS JOIN log
WHERE r.status IN ('under_billed', 'over_billed')
   OR (r.status = 'pending' AND r.delta > 0
       AND r.period_end < log.newest - interval '3 days')
ORDER BY abs(r.delta) DESC, r.customer, r.meter, r.period_start;

-- Facts held because no known period of their customer's meter contains them (yet), and
-- why: `no_meter` when no meter the log described has their event name (a typo in the
-- app, or a meter older than the log: see `lattice status`), else `no_period` (no
-- subscription period of the customer on a price of that meter contains the moment).
CREATE OR REPLACE VIEW unplaced_usage AS
SELECT f.identifier, f.event_name, f.customer, f.value, f.occurred_at,
       CASE WHEN EXISTS (SELECT 1 FROM meters m WHERE m.event_name = f.event_name)
            THEN 'no_period' ELSE 'no_meter' END AS reason
FROM usage_facts f
WHERE f.reported AND NOT f.cancelled
  AND NOT EXISTS (
      SELECT 1
      FROM meters m
      JOIN meter_prices mp ON mp.meter = m.id
      JOIN meter_periods p ON p.price = mp.price AND p.customer = f.customer
      WHERE m.event_name = f.event_name
        AND f.occurred_at >= p.period_start AND f.occurred_at < p.period_end
  );
