-- `version` gained two parts: a progress count after the lifecycle rank, and the API
-- version after the event id (projectors/subscriptions/snapshot.py). Keys written before
-- have neither, and `evt_...` sorts above any digit: left as they were, an old row would
-- beat every new snapshot of its second. They are rewritten as an update of no API
-- version whose progress is what the row shows (2 x attempt_count + 1);
-- `lattice replay invoices --from-beginning` makes them exact.
UPDATE invoices
SET version = regexp_replace(
        version,
        '^(\d:\d{12}:\d:)',
        '\1' || lpad((2 * least(coalesce(attempt_count, 0), 4999) + 1)::text, 4, '0') || ':'
    ) || ':'
WHERE version !~ '^\d:\d{12}:\d:\d{4}:';
UPDATE invoice_payments
SET version = regexp_replace(version, '^(\d:\d{12}:\d:)', '\10001:') || ':'
WHERE version !~ '^\d:\d{12}:\d:\d{4}:';
