-- Basil invoice lines name their price by id only, so the line does not say the price's
-- meter: it is taken from the prices other events show whole (subscription items, price
-- and plan events, lines before basil). A price's `recurring.meter` never changes, so the
-- first link seen is the link. Lines kept before this migration get their meter from
-- `lattice replay invoices`.
CREATE TABLE invoice_price_meters (
    price              text        PRIMARY KEY,
    meter              text        NOT NULL,
    last_event_id      text        NOT NULL,  -- the earliest event that showed the link
    last_event_created timestamptz NOT NULL
);
