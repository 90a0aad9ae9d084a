-- The runtime's own bookkeeping, in schema `lattice`.
CREATE SCHEMA IF NOT EXISTS lattice;
CREATE SCHEMA IF NOT EXISTS projections;

CREATE TABLE IF NOT EXISTS lattice.migrations (
    projector  text        NOT NULL,
    version    integer     NOT NULL,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projector, version)
);

-- Where each projector is in each partition: the offset of the next record to apply.
-- Written in the same transaction as the rows those records produced.
CREATE TABLE IF NOT EXISTS lattice.offsets (
    projector   text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    next_offset bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projector, topic, partition)
);
