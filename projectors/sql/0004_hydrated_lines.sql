-- Every line of a finalized invoice or an issued credit note whose webhook carried only
-- the first page, fetched once from GET /v1/invoices/{id}/lines (or the credit note's), so
-- a replay sees the same lines without calling Stripe again. Re-run on every start.
CREATE TABLE IF NOT EXISTS lattice.hydrated_lines (
    id         text        PRIMARY KEY,
    object     text        NOT NULL,
    account    text,
    lines      jsonb       NOT NULL,
    fetched_at timestamptz NOT NULL DEFAULT now()
);
