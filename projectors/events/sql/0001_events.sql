-- projections.events: an index of the log, one row per Stripe event id (the first
-- offset it was seen at; a redelivery changes nothing).
CREATE TABLE events (
    id                 text        PRIMARY KEY,
    type               text        NOT NULL,
    created            timestamptz NOT NULL,
    account            text,
    livemode           boolean     NOT NULL,
    api_version        text,
    object_id          text,
    topic              text        NOT NULL,
    partition          integer     NOT NULL,
    kafka_offset       bigint      NOT NULL,
    received_at        timestamptz NOT NULL,
    last_event_id      text        NOT NULL,
    last_event_created timestamptz NOT NULL
);

CREATE INDEX events_object_id ON events (object_id);
CREATE INDEX events_type_created ON events (type, created);
