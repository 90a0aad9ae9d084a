-- Account debits: a transfer on a connected account to the platform takes money from
-- that account (`debit`), and a reversal of it brings the money back (`debit_reversal`).
ALTER TABLE connect_ledger DROP CONSTRAINT connect_ledger_kind_check;
ALTER TABLE connect_ledger ADD CONSTRAINT connect_ledger_kind_check
    CHECK (kind IN ('transfer', 'reversal', 'application_fee', 'fee_refund', 'payout',
                    'payout_failed', 'debit', 'debit_reversal'));

-- Such transfers projected before were booked to the platform (their `destination`) as a
-- `transfer` and its reversals: book them again as the reducer now does.
UPDATE connect_ledger l
SET kind = 'debit', account = t.account, amount = -l.amount
FROM transfers t
WHERE l.kind = 'transfer' AND l.source_id = t.id
  AND t.account IS NOT NULL AND t.account <> t.destination;
UPDATE connect_ledger l
SET kind = 'debit_reversal', account = t.account, amount = -l.amount
FROM transfer_reversals r JOIN transfers t ON t.id = r.transfer
WHERE l.kind = 'reversal' AND l.source_id = r.id
  AND t.account IS NOT NULL AND t.account <> t.destination;
