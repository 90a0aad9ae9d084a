-- `quantity_decimal`: a line's exact quantity. Stripe's own `quantity_decimal` where the
-- line has one (a metered price with fractional units; `quantity` is then that number cut
-- to a whole one), else `quantity`. Rows kept before are filled from `quantity`, exact for
-- every line without a fraction; `lattice replay invoices` makes the others exact.
ALTER TABLE invoice_lines ADD COLUMN quantity_decimal numeric;
UPDATE invoice_lines SET quantity_decimal = quantity WHERE quantity IS NOT NULL;
