-- Every index is paid for on each of thousands of upserts a second; keep those that serve
-- the store (items by subscription) and the views (the few past-due subscriptions).
DROP INDEX IF EXISTS subscriptions_status;
CREATE INDEX IF NOT EXISTS subscriptions_past_due ON subscriptions (id)
    WHERE status IN ('past_due', 'unpaid');
DROP INDEX IF EXISTS subscription_items_price;
