-- A subscription's webhook carries the first 10 of its items (`items.has_more` says there
-- are more; Stripe allows 20): false here, and `mrr` counts such subscriptions in
-- `items_not_seen`. Rows written before stay true until their next snapshot (or
-- `lattice replay subscriptions`).
ALTER TABLE subscriptions ADD COLUMN items_complete boolean NOT NULL DEFAULT true;
