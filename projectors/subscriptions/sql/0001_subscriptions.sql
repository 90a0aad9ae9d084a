-- Subscriptions, their items and customers: the newest snapshot of each (see snapshot.py).
-- `version` orders snapshots (phase, created, lifecycle rank, event id); C collation makes
-- SQL compare it exactly as Python does.

CREATE TABLE subscriptions (
    id                   text PRIMARY KEY,
    customer             text,
    account              text,
    status               text        NOT NULL,
    cancel_at_period_end boolean     NOT NULL DEFAULT false,
    cancel_at            timestamptz,
    current_period_start timestamptz,
    current_period_end   timestamptz,
    trial_start          timestamptz,
    trial_end            timestamptz,
    canceled_at          timestamptz,
    ended_at             timestamptz,
    latest_invoice       text,
    collection_method    text,
    currency             text,
    created              timestamptz,
    livemode             boolean     NOT NULL DEFAULT false,
    version              text COLLATE "C" NOT NULL,
    last_event_id        text        NOT NULL,
    last_event_created   timestamptz NOT NULL
);
CREATE INDEX subscriptions_customer ON subscriptions (customer);
CREATE INDEX subscriptions_status ON subscriptions (status);

-- The items of the subscription snapshot a row shows; replaced whole with it.
CREATE TABLE subscription_items (
    id                   text PRIMARY KEY,
    subscription         text        NOT NULL,
    price                text,
    product              text,
    quantity             bigint,
    unit_amount          bigint,
    currency             text,
    interval             text,
    interval_count       integer,
    usage_type           text,
    meter                text,
    current_period_start timestamptz,
    current_period_end   timestamptz,
    last_event_id        text        NOT NULL,
    last_event_created   timestamptz NOT NULL
);
CREATE INDEX subscription_items_subscription ON subscription_items (subscription);
CREATE INDEX subscription_items_price ON subscription_items (price);

CREATE TABLE customers (
    id                 text PRIMARY KEY,
    email              text,
    name               text,
    delinquent         boolean,
    deleted            boolean     NOT NULL DEFAULT false,
    account            text,
    created            timestamptz,
    livemode           boolean     NOT NULL DEFAULT false,
    version            text COLLATE "C" NOT NULL,
    last_event_id      text        NOT NULL,
    last_event_created timestamptz NOT NULL
);
