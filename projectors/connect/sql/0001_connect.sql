-- The `connect` projection: connected accounts, the money the platform moves to and from
-- them, and a per-account ledger of those movements. Table names are unqualified: the
-- runtime sets search_path to `projections` (live) or to a shadow schema (replay).
--
-- Snapshot tables keep the newest snapshot by (last_event_created, last_event_id); amounts
-- that only grow (amount_reversed, amount_refunded) and flags that only turn on (reversed,
-- refunded) are merged with GREATEST / OR, so a late snapshot never undoes them.
-- Immutable child objects (reversals, fee refunds) and ledger entries keep the EARLIEST
-- event that reported them, so any order of delivery converges on the same rows.

CREATE TABLE IF NOT EXISTS connect_accounts (
    id                          text PRIMARY KEY,
    charges_enabled             boolean,
    payouts_enabled             boolean,
    details_submitted           boolean,
    requirements_currently_due  text[] NOT NULL DEFAULT '{}',
    requirements_past_due       text[] NOT NULL DEFAULT '{}',
    disabled_reason             text,
    deauthorized                boolean NOT NULL DEFAULT false,
    application                 text,
    type                        text,
    country                     text,
    default_currency            text,
    created                     timestamptz,
    livemode                    boolean,
    -- account.updated snapshots and (de)authorizations are ordered separately: a late
    -- account.updated must not bring a deauthorized account back.
    snapshot_event_id           text,
    snapshot_event_created      timestamptz,
    authorization_event_id      text,
    authorization_event_created timestamptz,
    last_event_id               text NOT NULL,
    last_event_created          timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS transfers (
    id                  text PRIMARY KEY,
    destination         text NOT NULL,
    amount              bigint NOT NULL,
    amount_reversed     bigint NOT NULL,
    currency            text NOT NULL,
    source_transaction  text,
    source_type         text,
    transfer_group      text,
    reversed            boolean NOT NULL,
    destination_payment text,
    description         text,
    account             text,
    livemode            boolean NOT NULL,
    created             timestamptz NOT NULL,
    last_event_id       text NOT NULL,
    last_event_created  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS transfers_destination ON transfers (destination);
CREATE INDEX IF NOT EXISTS transfers_transfer_group ON transfers (transfer_group)
    WHERE transfer_group IS NOT NULL;
CREATE INDEX IF NOT EXISTS transfers_source_transaction ON transfers (source_transaction)
    WHERE source_transaction IS NOT NULL;

CREATE TABLE IF NOT EXISTS transfer_reversals (
    id                 text PRIMARY KEY,
    transfer           text NOT NULL,
    amount             bigint NOT NULL,
    currency           text NOT NULL,
    source_refund      text,
    created            timestamptz NOT NULL,
    last_event_id      text NOT NULL,
    last_event_created timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS transfer_reversals_transfer ON transfer_reversals (transfer);

-- Charges that involve a connected account: destination charges (transfer_data,
-- on_behalf_of), separate charges (transfer_group) and direct charges (account set).
CREATE TABLE IF NOT EXISTS connect_charges (
    id                     text PRIMARY KEY,
    account                text,
    amount                 bigint NOT NULL,
    amount_captured        bigint NOT NULL,
    amount_refunded        bigint NOT NULL,
    currency               text NOT NULL,
    status                 text NOT NULL,
    refunded               boolean NOT NULL,
    destination            text,
    transfer_amount        bigint,
    on_behalf_of           text,
    transfer               text,
    transfer_group         text,
    application_fee        text,
    application_fee_amount bigint,
    livemode               boolean NOT NULL,
    created                timestamptz NOT NULL,
    last_event_id          text NOT NULL,
    last_event_created     timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS connect_charges_transfer_group ON connect_charges (transfer_group)
    WHERE transfer_group IS NOT NULL;

CREATE TABLE IF NOT EXISTS application_fees (
    id                      text PRIMARY KEY,
    account                 text NOT NULL,
    amount                  bigint NOT NULL,
    amount_refunded         bigint NOT NULL,
    currency                text NOT NULL,
    charge                  text,
    originating_transaction text,
    application             text,
    refunded                boolean NOT NULL,
    livemode                boolean NOT NULL,
    created                 timestamptz NOT NULL,
    last_event_id           text NOT NULL,
    last_event_created      timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS application_fee_refunds (
    id                 text PRIMARY KEY,
    fee                text NOT NULL,
    amount             bigint NOT NULL,
    currency           text NOT NULL,
    created            timestamptz NOT NULL,
    last_event_id      text NOT NULL,
    last_event_created timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS application_fee_refunds_fee ON application_fee_refunds (fee);

-- Payouts of connected accounts. The row shows the furthest status in the payout's
-- lifecycle (pending < in_transit < paid < failed | canceled), then the newest snapshot.
CREATE TABLE IF NOT EXISTS connect_payouts (
    id                 text PRIMARY KEY,
    account            text NOT NULL,
    amount             bigint NOT NULL,
    currency           text NOT NULL,
    status             text NOT NULL,
    status_rank        smallint NOT NULL,
    arrival_date       timestamptz,
    failure_code       text,
    failure_message    text,
    method             text,
    automatic          boolean,
    livemode           boolean NOT NULL,
    created            timestamptz NOT NULL,
    -- The earliest events that reported the payout paid and failed: the ledger's entries.
    paid_at            timestamptz,
    paid_event_id      text,
    failed_at          timestamptz,
    failed_event_id    text,
    last_event_id      text NOT NULL,
    last_event_created timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS connect_payouts_account ON connect_payouts (account);

-- One row per money movement, signed from the connected account's side: + reaches the
-- account (transfer, fee_refund, payout_failed), - leaves it (reversal, application_fee,
-- payout). Keyed by the moving object's own id, so duplicates and replays add nothing.
CREATE TABLE IF NOT EXISTS connect_ledger (
    kind               text NOT NULL CHECK (kind IN ('transfer', 'reversal', 'application_fee',
                                                     'fee_refund', 'payout', 'payout_failed')),
    source_id          text NOT NULL,
    account            text NOT NULL,
    currency           text NOT NULL,
    amount             bigint NOT NULL,
    created            timestamptz NOT NULL,
    event_id           text NOT NULL,
    last_event_id      text NOT NULL,
    last_event_created timestamptz NOT NULL,
    PRIMARY KEY (kind, source_id)
);
CREATE INDEX IF NOT EXISTS connect_ledger_account ON connect_ledger (account, currency);
