-- Every application of a record, with no key: a record applied twice shows up twice.
CREATE TABLE audit_applied (
    topic        text    NOT NULL,
    partition    integer NOT NULL,
    kafka_offset bigint  NOT NULL
);
