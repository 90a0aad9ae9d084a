-- What an item is charged, exactly: a price with a fraction of the minor unit has no
-- `unit_amount` (Stripe sets it null) but a `unit_amount_decimal` ("0.5"); a package price
-- (`transform_quantity`, a legacy plan's `transform_usage`) charges `unit_amount` per
-- package of `divide_by` units, rounded `up` or `down`. `mrr` reads them; rows kept before
-- have none (decimal prices counted nothing, packages per unit) until their next snapshot,
-- or at once by `lattice replay subscriptions`.
ALTER TABLE subscription_items
    ADD COLUMN unit_amount_decimal numeric,
    ADD COLUMN transform_divide_by bigint,
    ADD COLUMN transform_round text;
