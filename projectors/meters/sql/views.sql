-- Closed periods (a finalized invoice exists) where billing differs from usage, largest first.
CREATE OR REPLACE VIEW usage_discrepancies AS
SELECT customer, meter, event_name, period_start, period_end, status,
       reported_value, rejected_value, billed_quantity, delta,
       unattributed_rejections, last_event_id, last_event_created, credited_quantity,
       amount_credits
FROM meter_reconciliation
WHERE status IN ('under_billed', 'over_billed')
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
