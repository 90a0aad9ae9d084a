-- Views over the invoices projection (re-applied after every migration).

-- Open invoices with at least one failed payment attempt, oldest first: what dunning
-- (Smart Retries, reminder emails) is still working on. A failure is an
-- `invoice.payment_failed` (`failed_attempts`), or a second attempt (Stripe retries only
-- after a failure): a first attempt still under way (a bank debit processing) is none.
CREATE OR REPLACE VIEW dunning AS
SELECT id AS invoice,
       customer,
       subscription,
       account,
       currency,
       amount_due,
       amount_remaining,
       attempt_count,
       next_payment_attempt,
       due_date,
       created,
       last_event_created,
       livemode,
       failed_attempts,
       finalized_at
FROM invoices
WHERE status = 'open' AND NOT deleted AND (failed_attempts >= 1 OR attempt_count >= 2)
ORDER BY created, id;

-- past_due_subscriptions spans both projections; the subscriptions projection defines
-- how it is made. Create it now if that projection is already migrated.
DO $$
BEGIN
    IF to_regprocedure('create_past_due_view()') IS NOT NULL THEN
        PERFORM create_past_due_view();
    END IF;
END
$$;
