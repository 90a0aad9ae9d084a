-- Invoices, their lines and invoice payments: the newest snapshot of each (see
-- projectors/subscriptions/snapshot.py for `version`).

CREATE TABLE invoices (
    id                   text PRIMARY KEY,
    customer             text,
    account              text,
    subscription         text,
    status               text        NOT NULL,
    deleted              boolean     NOT NULL DEFAULT false,
    billing_reason       text,
    collection_method    text,
    currency             text,
    total                bigint,
    amount_due           bigint,
    amount_paid          bigint,
    amount_remaining     bigint,
    attempt_count        integer,
    next_payment_attempt timestamptz,
    due_date             timestamptz,
    period_start         timestamptz,
    period_end           timestamptz,
    paid_at              timestamptz,
    finalized_at         timestamptz,
    voided_at            timestamptz,
    number               text,
    created              timestamptz,
    livemode             boolean     NOT NULL DEFAULT false,
    -- false when the snapshot's `lines.has_more` was true: more lines exist than we hold.
    lines_complete       boolean     NOT NULL DEFAULT true,
    version              text COLLATE "C" NOT NULL,
    last_event_id        text        NOT NULL,
    last_event_created   timestamptz NOT NULL
);
CREATE INDEX invoices_subscription ON invoices (subscription);
CREATE INDEX invoices_customer ON invoices (customer);
CREATE INDEX invoices_open ON invoices (created) WHERE status = 'open' AND NOT deleted;

-- The lines of the invoice snapshot a row shows; replaced whole with it.
CREATE TABLE invoice_lines (
    id                 text PRIMARY KEY,
    invoice            text        NOT NULL,
    subscription       text,
    subscription_item  text,
    price              text,
    product            text,
    meter              text,
    quantity           bigint,
    amount             bigint,
    currency           text,
    proration          boolean,
    period_start       timestamptz,
    period_end         timestamptz,
    last_event_id      text        NOT NULL,
    last_event_created timestamptz NOT NULL
);
CREATE INDEX invoice_lines_invoice ON invoice_lines (invoice);
CREATE INDEX invoice_lines_subscription ON invoice_lines (subscription);

CREATE TABLE invoice_payments (
    id                 text PRIMARY KEY,
    invoice            text,
    status             text,
    amount_paid        bigint,
    amount_requested   bigint,
    currency           text,
    paid_at            timestamptz,
    is_default         boolean,
    account            text,
    livemode           boolean     NOT NULL DEFAULT false,
    version            text COLLATE "C" NOT NULL,
    last_event_id      text        NOT NULL,
    last_event_created timestamptz NOT NULL
);
CREATE INDEX invoice_payments_invoice ON invoice_payments (invoice);
