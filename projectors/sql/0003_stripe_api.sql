-- Stripe API bookkeeping (projectors/stripe_api). Re-run on every start: idempotent.

-- The full body of each thin event, fetched once from GET /v2/core/events/{id}, so a
-- replay never calls Stripe again (and still works after Stripe's 30 days).
CREATE TABLE IF NOT EXISTS lattice.hydrated_events (
    id         text        PRIMARY KEY,
    type       text        NOT NULL,
    context    text,
    body       jsonb       NOT NULL,
    fetched_at timestamptz NOT NULL DEFAULT now()
);

-- Every event `lattice backfill` appended to a topic: `sending` before the producer is
-- asked, `appended` once the broker acknowledged. A run that was killed in between
-- leaves `sending` rows, which the next run settles by reading the log tail, so no event
-- is appended twice.
CREATE TABLE IF NOT EXISTS lattice.backfilled_events (
    topic      text        NOT NULL,
    id         text        NOT NULL,
    state      text        NOT NULL CHECK (state IN ('sending', 'appended')),
    created    timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, id)
);
