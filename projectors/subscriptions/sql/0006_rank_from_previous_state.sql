-- The lifecycle rank in `version` is doubled, so that a snapshot whose event says it left
-- a state (`previous_attributes.status`: a recovery from `past_due`, a resume from
-- `paused`) can rank just above the snapshots in that state, within one second. Keys
-- written before are rewritten to the new scale: the rank is one digit, after the phase
-- and the 12-digit `created` (projectors/subscriptions/snapshot.py).
UPDATE subscriptions
SET version = overlay(version PLACING (2 * substr(version, 16, 1)::int)::text FROM 16 FOR 1)
WHERE version ~ '^\d:\d{12}:[0-4]:';
