-- An invoice whose webhook body did not carry every line (`lines.has_more`): the metered
-- line of a period may be among those not seen, so the period's rows say `incomplete`
-- instead of counting it as unbilled. Rows written before this migration keep their
-- status until recomputed (`lattice replay meters --from-beginning` recomputes them all).
ALTER TABLE meter_invoices
    ADD COLUMN lines_complete boolean NOT NULL DEFAULT true,
    ADD COLUMN period_start timestamptz,
    ADD COLUMN period_end timestamptz;

ALTER TABLE meter_reconciliation DROP CONSTRAINT meter_reconciliation_status_check;
ALTER TABLE meter_reconciliation ADD CONSTRAINT meter_reconciliation_status_check
    CHECK (status IN ('pending', 'matched', 'under_billed', 'over_billed', 'incomplete'));
