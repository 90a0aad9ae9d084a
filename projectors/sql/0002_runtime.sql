-- Runtime bookkeeping added by the projector runtime. This folder is re-run on every
-- start (not recorded), so every statement here is idempotent.

-- The Kafka timestamp (time received) of the last record applied per partition, for
-- `lattice status`. Looked up first: ALTER TABLE takes its ACCESS EXCLUSIVE lock even when
-- the column exists, so on every start it would wait for any open transaction that read
-- the positions (a BI session left idle in one), with every projector's commit queued
-- behind it.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_attribute
        WHERE attrelid = 'lattice.offsets'::regclass AND attname = 'last_event_at'
          AND NOT attisdropped
    ) THEN
        ALTER TABLE lattice.offsets ADD COLUMN last_event_at timestamptz;
    END IF;
END
$$;

-- Every record a projector gave up on, written in the transaction that moved past it,
-- so `lattice status` can count dead letters without reading the dead-letter topic.
CREATE TABLE IF NOT EXISTS lattice.dead_letters (
    projector   text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    kafka_offset bigint     NOT NULL,
    error       text        NOT NULL,
    dead_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projector, topic, partition, kafka_offset)
);
