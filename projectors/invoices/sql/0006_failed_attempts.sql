-- `failed_attempts`: the highest `attempt_count` an `invoice.payment_failed` showed, so how
-- many attempts had failed by the newest failure seen (0: none seen). `attempt_count`
-- alone counts an attempt still under way: a bank debit (SEPA, ACH) is `open` with
-- `attempt_count` 1 for days while it processes, though nothing failed, and `dunning`
-- listed it. Kept whatever order events arrive in (the greatest wins, not the newest).
-- Open rows kept before take `attempt_count`, what `dunning` read until now (only those:
-- a paid or void invoice is never listed again, and rewriting every row would hold the
-- table locked for as long); `lattice replay invoices` makes them exact.
ALTER TABLE invoices ADD COLUMN failed_attempts integer NOT NULL DEFAULT 0;
UPDATE invoices SET failed_attempts = attempt_count
WHERE status = 'open' AND NOT deleted AND attempt_count > 0;
