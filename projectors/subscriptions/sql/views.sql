-- Views over the subscriptions projection (re-applied after every migration).

-- What each licensed item of any subscription is charged a month (not rounded), in its
-- currency's minor unit: the exact unit amount (fractions of the minor unit too) times the
-- quantity, or times the packages it makes for a package price (`divide_by` units each,
-- rounded `up` or `down`), brought to one month. Items whose amount is unknown (tiered
-- prices, another currency's amount not shown) and metered items are not in it.
CREATE OR REPLACE VIEW subscription_item_mrr AS
SELECT i.subscription, i.id AS item, coalesce(i.currency, s.currency) AS currency,
       coalesce(i.unit_amount_decimal, i.unit_amount::numeric)
       * CASE WHEN coalesce(i.transform_divide_by, 0) <= 0 THEN i.quantity
              WHEN i.transform_round = 'down'
                  THEN floor(i.quantity::numeric / i.transform_divide_by)
              ELSE ceil(i.quantity::numeric / i.transform_divide_by) END
       * CASE i.interval
             WHEN 'month' THEN 1
             WHEN 'year' THEN 1 / 12.0
             WHEN 'week' THEN 52 / 12.0
             WHEN 'day' THEN 365 / 12.0
         END
       / greatest(coalesce(i.interval_count, 1), 1) AS monthly
FROM subscription_items i
JOIN subscriptions s ON s.id = i.subscription
WHERE coalesce(i.unit_amount_decimal, i.unit_amount) IS NOT NULL
  AND i.quantity IS NOT NULL  -- a metered item has none
  AND i.usage_type IS DISTINCT FROM 'metered'  -- nor would one that showed one count
  AND i.interval IS NOT NULL;

-- Monthly recurring revenue per currency, in the currency's minor unit: every licensed item
-- of an active or past_due subscription, as `subscription_item_mrr` brings it to a month
-- (a year is 12 months, a week 52/12 of a month, a day 365/12 of one).
-- Trialing, paused, unpaid and ended subscriptions bring nothing, nor those whose payment
-- collection is paused (still `active`), nor a connected account's own subscriptions
-- (`account` set: its revenue, not the platform's); metered items (no quantity) neither.
-- Test mode (`stripe listen` forwards it to the same endpoint) is a row of its own, never
-- added to live revenue. An item whose price shows another currency than the
-- subscription's has no amount (see the reducer) and brings nothing.
CREATE OR REPLACE VIEW mrr AS
WITH unpriced AS (
    -- The licensed items of the subscriptions MRR counts whose amount the webhook did not
    -- carry (a tiered price; the currency's amount missing from `currency_options`), by
    -- currency and mode: MRR is short by them. One pass over the items.
    SELECT coalesce(i.currency, o.currency) AS currency, o.livemode, count(*) AS items
    FROM subscription_items i
    JOIN subscriptions o ON o.id = i.subscription
    WHERE o.status IN ('active', 'past_due')
      AND o.pause_collection IS NULL
      AND o.account IS NULL
      AND i.usage_type IS DISTINCT FROM 'metered'
      AND i.unit_amount IS NULL
      AND i.unit_amount_decimal IS NULL
    GROUP BY 1, 2
)
SELECT m.currency,
       round(sum(m.monthly))::bigint AS mrr,
       count(DISTINCT s.id) AS subscriptions,
       s.livemode,
       -- Summed with only the items their webhook carried (`items.has_more`): MRR is
       -- short by their items not seen.
       count(DISTINCT s.id) FILTER (WHERE NOT s.items_complete) AS items_not_seen,
       coalesce(min(u.items), 0) AS items_not_priced
FROM subscriptions s
JOIN subscription_item_mrr m ON m.subscription = s.id
LEFT JOIN unpriced u ON u.currency = m.currency AND u.livemode = s.livemode
WHERE s.status IN ('active', 'past_due')
  AND s.pause_collection IS NULL
  AND s.account IS NULL
GROUP BY 1, s.livemode;

-- `past_due_subscriptions` joins this projection's tables with the invoices projection's,
-- so it is created by whichever of the two is migrated last: both views.sql call this.
CREATE OR REPLACE FUNCTION create_past_due_view() RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    IF to_regclass('invoices') IS NULL OR to_regclass('subscriptions') IS NULL THEN
        RETURN;
    END IF;
    -- Subscriptions in past_due or unpaid, with the customer's email and the open invoice
    -- being retried (the subscription's latest invoice when it is open, else the newest
    -- open one): amount still due, attempts so far, next automatic retry; and how many
    -- invoices are open and what they owe together.
    CREATE OR REPLACE VIEW past_due_subscriptions AS
    SELECT s.id AS subscription,
           s.customer,
           c.email AS customer_email,
           c.name AS customer_name,
           s.account,
           s.status,
           s.current_period_end,
           inv.id AS invoice,
           -- The subscription's when no invoice is open: what `uncollectible_remaining` and
           -- `total_remaining` are in (one subscription's invoices share its currency).
           coalesce(inv.currency, s.currency) AS currency,
           inv.amount_due,
           inv.amount_remaining,
           inv.attempt_count,
           inv.next_payment_attempt,
           inv.due_date,
           s.last_event_created,
           -- Appended (a view's columns only grow): every open invoice of the subscription,
           -- an older one left open included, and what they still owe together.
           owed.open_invoices,
           owed.total_remaining,
           s.livemode,
           -- Invoices the retries gave up on and marked uncollectible (a common setting
           -- next to `unpaid`): no longer retried, still owed.
           owed.uncollectible_invoices,
           owed.uncollectible_remaining
    FROM subscriptions s
    LEFT JOIN customers c ON c.id = s.customer
    LEFT JOIN LATERAL (
        SELECT i.*
        FROM invoices i
        WHERE i.subscription = s.id AND i.status = 'open' AND NOT i.deleted
        ORDER BY (i.id = s.latest_invoice) DESC, i.created DESC, i.id
        LIMIT 1
    ) inv ON true
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE i.status = 'open') AS open_invoices,
               sum(i.amount_remaining) FILTER (WHERE i.status = 'open') AS total_remaining,
               count(*) FILTER (WHERE i.status = 'uncollectible') AS uncollectible_invoices,
               sum(i.amount_remaining) FILTER (WHERE i.status = 'uncollectible')
                   AS uncollectible_remaining
        FROM invoices i
        WHERE i.subscription = s.id AND i.status IN ('open', 'uncollectible') AND NOT i.deleted
    ) owed
    WHERE s.status IN ('past_due', 'unpaid');
END
$fn$;

SELECT create_past_due_view();
