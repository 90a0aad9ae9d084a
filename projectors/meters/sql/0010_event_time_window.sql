-- A meter fed pre-aggregated usage (`event_time_window`: `hour` or `day`): Stripe keeps
-- only the newest meter event sent in each hour or day (UTC) of a customer's usage and
-- bills that one, so the app's running totals per window are not summed. Meters kept
-- before have none until their next snapshot (`lattice replay meters` reads them again).
ALTER TABLE meters ADD COLUMN event_time_window text
    CHECK (event_time_window IN ('hour', 'day'));
