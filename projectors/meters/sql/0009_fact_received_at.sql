-- When the fact reached the log (its record's timestamp: the broker's on a usage topic
-- made by `lattice stack up`, LogAppendTime; the earliest of its versions). A fact's time for the rows' newest event, and so for the clock of
-- `usage_discrepancies`, is the earlier of when it happened and when it was reported: a
-- fact stamped days ahead (the app's clock wrong, sampled by an error report or not) must
-- not move that clock. Facts kept before have none: their own time, as before.
ALTER TABLE usage_facts ADD COLUMN received_at timestamptz;
