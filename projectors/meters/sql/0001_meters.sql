-- The meters projection: its inputs, kept as facts that any order of arrival merges to the
-- same rows, and `meter_reconciliation`, recomputed from them for every key a batch touches.

-- What the app reported on `usage.reported`, deduplicated by the identifier sent to Stripe.
-- A cancel that arrives before its report is kept (reported = false) and wins once it does.
CREATE TABLE usage_facts (
    identifier         text        PRIMARY KEY,
    event_name         text        NOT NULL,
    customer           text        NOT NULL,
    value              numeric     NOT NULL,
    occurred_at        timestamptz NOT NULL,
    reported           boolean     NOT NULL,
    cancelled          boolean     NOT NULL,
    last_event_id      text        NOT NULL,
    last_event_created timestamptz NOT NULL
);
CREATE INDEX usage_facts_by_customer ON usage_facts (customer, event_name, occurred_at, identifier);

CREATE TABLE meters (
    id                 text        PRIMARY KEY,
    event_name         text        NOT NULL,
    display_name       text,
    status             text        NOT NULL,
    aggregation        text        NOT NULL CHECK (aggregation IN ('sum', 'count', 'last')),
    last_event_id      text        NOT NULL,
    last_event_created timestamptz NOT NULL
);
CREATE INDEX meters_by_event_name ON meters (event_name);

-- Which meter a price bills: basil-era invoice lines name only the price.
CREATE TABLE meter_prices (
    price              text        PRIMARY KEY,
    meter              text        NOT NULL,
    last_event_id      text        NOT NULL,
    last_event_created timestamptz NOT NULL
);
CREATE INDEX meter_prices_by_meter ON meter_prices (meter);

-- Billing periods of a customer's metered price, from subscription items and invoice lines.
CREATE TABLE meter_periods (
    customer           text        NOT NULL,
    price              text        NOT NULL,
    period_start       timestamptz NOT NULL,
    period_end         timestamptz NOT NULL,
    last_event_id      text        NOT NULL,
    last_event_created timestamptz NOT NULL,
    PRIMARY KEY (customer, price, period_start)
);
CREATE INDEX meter_periods_by_price ON meter_periods (price);

-- The newest snapshot of each invoice; `rank` orders statuses that share a `created` second.
CREATE TABLE meter_invoices (
    id                 text        PRIMARY KEY,
    customer           text        NOT NULL,
    status             text        NOT NULL,
    rank               integer     NOT NULL,
    last_event_id      text        NOT NULL,
    last_event_created timestamptz NOT NULL
);

-- Priced lines of invoice snapshots. A line counts only while it belongs to the invoice's
-- winning snapshot (same last_event_id), so a line dropped from a draft stops counting.
CREATE TABLE meter_invoice_lines (
    invoice            text        NOT NULL,
    line               text        NOT NULL,
    customer           text        NOT NULL,
    price              text        NOT NULL,
    quantity           numeric     NOT NULL,
    period_start       timestamptz NOT NULL,
    period_end         timestamptz NOT NULL,
    rank               integer     NOT NULL,
    last_event_id      text        NOT NULL,
    last_event_created timestamptz NOT NULL,
    PRIMARY KEY (invoice, line)
);
CREATE INDEX meter_invoice_lines_by_period ON meter_invoice_lines (customer, price, period_start);

-- Meter events Stripe rejected, by the identifier its error reports sampled.
CREATE TABLE meter_rejections (
    identifier         text        PRIMARY KEY,
    code               text        NOT NULL,
    message            text,
    last_event_id      text        NOT NULL,
    last_event_created timestamptz NOT NULL
);

-- Every error report, with how many errors it counted beyond the samples it listed.
CREATE TABLE meter_error_reports (
    event_id           text        PRIMARY KEY,
    type               text        NOT NULL,
    meter              text,
    error_count        bigint      NOT NULL,
    sampled_count      bigint      NOT NULL,
    unsampled_count    bigint      GENERATED ALWAYS AS (greatest(error_count - sampled_count, 0)) STORED,
    validation_start   timestamptz,
    validation_end     timestamptz,
    summary            text,
    last_event_id      text        NOT NULL,
    last_event_created timestamptz NOT NULL
);
CREATE INDEX meter_error_reports_by_meter ON meter_error_reports (meter);

CREATE TABLE meter_reconciliation (
    customer                text        NOT NULL,
    meter                   text        NOT NULL,
    period_start            timestamptz NOT NULL,
    event_name              text        NOT NULL,
    period_end              timestamptz NOT NULL,
    aggregation             text        NOT NULL,
    reported_value          numeric     NOT NULL,
    rejected_value          numeric     NOT NULL,
    billed_quantity         numeric     NOT NULL,
    delta                   numeric     NOT NULL,
    status                  text        NOT NULL
        CHECK (status IN ('pending', 'matched', 'under_billed', 'over_billed')),
    reported_facts          bigint      NOT NULL,
    rejected_facts          bigint      NOT NULL,
    -- Errors Stripe counted for this meter over this period beyond the samples it listed:
    -- they cannot be tied to a customer, so a non-zero value means rejected_value may be low.
    unattributed_rejections bigint      NOT NULL,
    invoices                bigint      NOT NULL,
    last_event_id           text        NOT NULL,
    last_event_created      timestamptz NOT NULL,
    PRIMARY KEY (customer, meter, period_start)
);
CREATE INDEX meter_reconciliation_by_status ON meter_reconciliation (status, period_start);
