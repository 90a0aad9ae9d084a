-- A credit note line of an invoice line shows a `quantity` even when it was made by
-- amount (Stripe's own example: amount 749, quantity 1). Its units count as credited only
-- when its amount is what that many units cost on the credited line; otherwise it is an
-- amount credit (`amount_credits`). Rows written before this migration have no amounts and
-- keep counting their quantity until `lattice replay meters` reads them again.
ALTER TABLE meter_invoice_lines ADD COLUMN amount bigint;
ALTER TABLE meter_credit_note_lines ADD COLUMN amount bigint;

-- Every read-model row names the event it reflects: a credit note's line, fixed once the
-- note is issued, the earliest event that showed it (rows kept before: their note's).
ALTER TABLE meter_credit_note_lines
    ADD COLUMN last_event_id text,
    ADD COLUMN last_event_created timestamptz;
UPDATE meter_credit_note_lines cl
SET last_event_id = cn.last_event_id, last_event_created = cn.last_event_created
FROM meter_credit_notes cn WHERE cn.id = cl.credit_note;
ALTER TABLE meter_credit_note_lines
    ALTER COLUMN last_event_id SET NOT NULL,
    ALTER COLUMN last_event_created SET NOT NULL;
