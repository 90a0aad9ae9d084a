-- A credit note line of an invoice line shows a `quantity` even when it was made by
-- amount (Stripe's own example: amount 749, quantity 1). Its units count as credited only
-- when its amount is what that many units cost on the credited line; otherwise it is an
-- amount credit (`amount_credits`). Rows written before this migration have no amounts and
-- keep counting their quantity until `lattice replay meters` reads them again.
ALTER TABLE meter_invoice_lines ADD COLUMN amount bigint;
ALTER TABLE meter_credit_note_lines ADD COLUMN amount bigint;
