-- Credit notes against metered invoice lines: units credited back are not billed. A note's
-- lines never change once it is issued and `void` is final, so rows only grow and
-- `voided` only turns true; any order of arrival gives the same tables. Rows written
-- before this migration get their credits from `lattice replay meters`.
CREATE TABLE meter_credit_notes (
    id                 text        PRIMARY KEY,
    invoice            text        NOT NULL,
    customer           text        NOT NULL,
    voided             boolean     NOT NULL,
    last_event_id      text        NOT NULL,
    last_event_created timestamptz NOT NULL
);

-- Lines that credit an invoice line: `quantity` units, or NULL for an amount only.
CREATE TABLE meter_credit_note_lines (
    credit_note  text    NOT NULL,
    line         text    NOT NULL,
    invoice      text    NOT NULL,
    invoice_line text    NOT NULL,
    quantity     numeric,
    PRIMARY KEY (credit_note, line)
);
CREATE INDEX meter_credit_note_lines_by_invoice_line
    ON meter_credit_note_lines (invoice, invoice_line);

ALTER TABLE meter_reconciliation
    ADD COLUMN credited_quantity numeric NOT NULL DEFAULT 0,
    ADD COLUMN amount_credits integer NOT NULL DEFAULT 0;

-- `credited`: the invoices billed all the usage (or more), and credit notes gave units
-- back: less was charged than used, by a decision rather than a fault of the pipeline.
ALTER TABLE meter_reconciliation DROP CONSTRAINT meter_reconciliation_status_check;
ALTER TABLE meter_reconciliation ADD CONSTRAINT meter_reconciliation_status_check
    CHECK (status IN ('pending', 'matched', 'under_billed', 'over_billed', 'incomplete',
                      'credited'));
