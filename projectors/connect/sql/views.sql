-- Derived from the ledger, so it cannot drift from it. Columns are only ever appended
-- (CREATE OR REPLACE VIEW cannot drop or rename one). All amounts are positive except
-- `net`, the signed sum of every movement (what reached the account and stayed there).
CREATE OR REPLACE VIEW connect_balances AS
SELECT
    account,
    currency,
    coalesce(sum(amount) FILTER (WHERE kind = 'transfer'), 0)::bigint         AS transferred,
    coalesce(-sum(amount) FILTER (WHERE kind = 'reversal'), 0)::bigint        AS reversed,
    coalesce(-sum(amount) FILTER (WHERE kind = 'application_fee'), 0)::bigint AS application_fees,
    coalesce(sum(amount) FILTER (WHERE kind = 'fee_refund'), 0)::bigint       AS refunded_fees,
    coalesce(-sum(amount) FILTER (WHERE kind IN ('payout', 'payout_failed')), 0)::bigint
                                                                              AS paid_out,
    sum(amount)::bigint                                                       AS net,
    max(created)                                                              AS last_movement_at,
    -- The newest event behind the balance, as every read-model row carries.
    (array_agg(last_event_id ORDER BY last_event_created DESC, last_event_id COLLATE "C" DESC))[1]
                                                                              AS last_event_id,
    max(last_event_created)                                                   AS last_event_created,
    -- Account debits (transfers from the account to the platform), net of their reversals.
    coalesce(-sum(amount) FILTER (WHERE kind IN ('debit', 'debit_reversal')), 0)::bigint
                                                                              AS debited
FROM connect_ledger
GROUP BY account, currency;

-- Which charge funded which transfer: destination charges name their transfer, separate
-- charges and transfers share a source_transaction or a transfer_group.
CREATE OR REPLACE VIEW connect_charge_transfers AS
SELECT c.id AS charge, t.id AS transfer, t.destination, t.amount, t.amount_reversed,
       t.currency, c.transfer_group,
       CASE WHEN c.transfer = t.id OR t.source_transaction = c.id THEN 'charge'
            ELSE 'transfer_group' END AS linked_by
FROM connect_charges c
JOIN transfers t
  ON c.transfer = t.id
  OR t.source_transaction = c.id
  OR (c.transfer_group IS NOT NULL AND t.transfer_group = c.transfer_group);
