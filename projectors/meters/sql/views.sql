-- Closed periods (a finalized invoice exists) where billing differs from usage; and, as
-- `unbilled`, periods that ended over three days ago with usage Stripe kept and no
-- finalized invoice at all (Stripe finalizes a period's invoice about an hour after it
-- ends, or up to 72 hours later while webhook endpoints fail): a subscription canceled
-- mid-period without `invoice_now`, or invoices left as drafts. Largest first.
CREATE OR REPLACE VIEW usage_discrepancies AS
SELECT customer, meter, event_name, period_start, period_end,
       CASE status WHEN 'pending' THEN 'unbilled' ELSE status END AS status,
       reported_value, rejected_value, billed_quantity, delta,
       unattributed_rejections, last_event_id, last_event_created, credited_quantity,
       amount_credits
FROM meter_reconciliation
WHERE status IN ('under_billed', 'over_billed')
   OR (status = 'pending' AND delta > 0 AND period_end < now() - interval '3 days')
ORDER BY abs(delta) DESC, customer, meter, period_start;

-- Facts held because no known period of their customer's meter contains them (yet).
CREATE OR REPLACE VIEW unplaced_usage AS
SELECT f.identifier, f.event_name, f.customer, f.value, f.occurred_at
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
