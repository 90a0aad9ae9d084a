-- Account debits: a transfer on a connected account to the platform takes money from
-- that account (`debit`), and a reversal of it brings the money back (`debit_reversal`).
-- Such transfers projected before this migration were booked to the platform as a
-- `transfer`; `lattice replay connect --from-beginning` books them again.
ALTER TABLE connect_ledger DROP CONSTRAINT connect_ledger_kind_check;
ALTER TABLE connect_ledger ADD CONSTRAINT connect_ledger_kind_check
    CHECK (kind IN ('transfer', 'reversal', 'application_fee', 'fee_refund', 'payout',
                    'payout_failed', 'debit', 'debit_reversal'));
