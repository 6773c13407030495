-- Version 12: spending limits and overdraft (issue 18).
--
-- floor: how far below zero a DEBT-mode spend may take the pair (<= 0; 0: not
-- at all). debt: credits the pair spent that no grant backed, lent by
-- @overdraft as lots of their own (movement `debt`) and paid back first by the
-- next grants (movement `debt_repayment`); `ledger verify` derives it from
-- those entries. Both live on the balances row every change of the pair
-- writes anyway.
ALTER TABLE balances ADD COLUMN floor bigint NOT NULL DEFAULT 0 CHECK (floor <= 0);
ALTER TABLE balances ADD COLUMN debt bigint NOT NULL DEFAULT 0 CHECK (debt >= 0);

-- Every floor ever set, with the ledger transaction that set it: the journal of
-- limits `ledger verify` proves "no spend took a pair below its floor" against
-- (each change is also one version of the pair). Appended only.
CREATE TABLE spending_limits (
    transaction_id  uuid PRIMARY KEY,
    account_id      text NOT NULL,
    asset           text NOT NULL,
    floor           bigint NOT NULL CHECK (floor <= 0),
    created_at      timestamptz NOT NULL
);
CREATE INDEX spending_limits_pair ON spending_limits (account_id, asset, created_at);
