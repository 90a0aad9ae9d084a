-- "Pause payment collection" leaves a subscription `active` and sets `pause_collection`;
-- its `behavior` (keep_as_draft, mark_uncollectible, void) is kept so that MRR can leave
-- such a subscription out. Rows written before stay NULL until their next snapshot (or
-- `lattice replay subscriptions --from-beginning`).
ALTER TABLE subscriptions ADD COLUMN IF NOT EXISTS pause_collection text;
