-- The subscription a period belongs to (its item's, or its invoice line's). A period ends
-- where the next one of the same subscription and meter begins (a price changed or the
-- billing cycle reset mid-period), never where another subscription's begins: Stripe
-- bills a customer's usage of a meter on each subscription that prices it. Periods kept
-- before have none and are not cut (a past period sees no later snapshot):
-- `lattice replay meters` gives them theirs.
ALTER TABLE meter_periods ADD COLUMN subscription text;
