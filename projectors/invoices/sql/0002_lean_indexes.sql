-- Every index is paid for on each of thousands of upserts a second: lines are reached
-- through their invoice (invoices.subscription is indexed), not by subscription.
DROP INDEX IF EXISTS invoice_lines_subscription;
