-- A price linked to its meter for the first time fills the meter of the lines kept before
-- the link (FILL_METERS in projectors/invoices/store.py). Without an index that was a scan
-- of every line, once per newly linked price: with a price per customer (custom pricing),
-- each new subscription read the whole table inside the projector's transaction, ~33 ms
-- at 300,000 lines and growing with them; a replay paid it once per batch. This index
-- holds the lines without a meter (licensed lines never get one, so most lines) and
-- costs about 1 us per line written.
CREATE INDEX invoice_lines_unmetered ON invoice_lines (price) WHERE meter IS NULL;
