-- A credit note whose webhook body did not carry every line (`lines.has_more`): a line
-- not seen may credit a metered line of the periods its invoice bills (`unseen_credits`).
-- Credits only lower what was billed net, so an `under_billed` or `credited` period stays
-- so; a `matched` or `over_billed` one says `incomplete` until a snapshot with every line
-- arrives. Rows written before this migration keep their status until recomputed
-- (`lattice replay meters --from-beginning` recomputes them all).
ALTER TABLE meter_credit_notes ADD COLUMN lines_complete boolean NOT NULL DEFAULT true;
CREATE INDEX meter_credit_notes_by_invoice ON meter_credit_notes (invoice);
ALTER TABLE meter_reconciliation ADD COLUMN unseen_credits boolean NOT NULL DEFAULT false;
