-- Version 12: spending limits, overdraft, shared pools and member caps (issue 18).
--
-- balances.floor: how far below zero a DEBT-mode spend may take the pair
-- (<= 0; 0: not at all). balances.debt: credits the pair spent that no grant
-- backed, lent by @overdraft as lots of their own (movement `debt`) and paid
-- back first by the next grants (movement `debt_repayment`); `ledger verify`
-- derives it from those entries. All on the balances row every change of the
-- pair writes anyway: no new hot row.
ALTER TABLE balances ADD COLUMN floor bigint NOT NULL DEFAULT 0 CHECK (floor <= 0);
ALTER TABLE balances ADD COLUMN debt bigint NOT NULL DEFAULT 0 CHECK (debt >= 0);

-- Member caps of the pair's account on the asset, per window (NULL: none), and
-- what they are checked against: what the account's spends hold now, wherever
-- their credits come from (cap_held), and what its spends settled in the
-- current UTC day, calendar month and ever. A window's counter restarts at 0
-- when the day (month) it counts is no longer today's: no background work.
ALTER TABLE balances
    ADD COLUMN cap_day bigint CHECK (cap_day >= 0),
    ADD COLUMN cap_month bigint CHECK (cap_month >= 0),
    ADD COLUMN cap_lifetime bigint CHECK (cap_lifetime >= 0),
    ADD COLUMN cap_held bigint NOT NULL DEFAULT 0 CHECK (cap_held >= 0),
    ADD COLUMN spent_day bigint NOT NULL DEFAULT 0 CHECK (spent_day >= 0),
    ADD COLUMN day_start date,
    ADD COLUMN spent_month bigint NOT NULL DEFAULT 0 CHECK (spent_month >= 0),
    ADD COLUMN month_start date,
    ADD COLUMN spent_total bigint NOT NULL DEFAULT 0 CHECK (spent_total >= 0);

-- Start the counters where the journal is: every open hold so far is the
-- account's own, and what it settled today, this month and ever.
UPDATE balances SET cap_held = reserved;
UPDATE balances b SET spent_total = s.total, spent_day = s.today, spent_month = s.month,
    day_start = (now() AT TIME ZONE 'UTC')::date,
    month_start = date_trunc('month', now() AT TIME ZONE 'UTC')::date
FROM (SELECT account_id, asset, -sum(amount) AS total,
             coalesce(-sum(amount) FILTER (WHERE (created_at AT TIME ZONE 'UTC')::date
                                            = (now() AT TIME ZONE 'UTC')::date), 0) AS today,
             coalesce(-sum(amount) FILTER (WHERE date_trunc('month', created_at AT TIME ZONE 'UTC')
                                            = date_trunc('month', now() AT TIME ZONE 'UTC')), 0) AS month
      FROM entries WHERE movement = 'settle' AND bucket <> 'system' GROUP BY 1, 2) AS s
WHERE b.account_id = s.account_id AND b.asset = s.asset;

-- Shared pools: an account may name a parent at creation (never changed
-- after, so no cycle can form); `ancestors` is the chain, nearest first, at
-- most POOL_DEPTH_MAX long, read with the account by every batch.
ALTER TABLE accounts
    ADD COLUMN parent_id text,
    ADD COLUMN ancestors text[] NOT NULL DEFAULT '{}';

-- A hold funded by an ancestor lives on the ancestor's pair (account_id), for
-- the member that spent it (member_id); NULL for the account's own spends.
ALTER TABLE reservations ADD COLUMN member_id text;

-- Every limit ever set, with the ledger transaction that set it: the journal
-- `ledger verify` proves "no spend past a floor or a cap" against (each change
-- is also one version of the pair). Appended only.
CREATE TABLE spending_limits (
    transaction_id  uuid PRIMARY KEY,
    account_id      text NOT NULL,
    asset           text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('floor', 'cap_day', 'cap_month', 'cap_lifetime')),
    value           bigint,  -- NULL: the cap removed
    created_at      timestamptz NOT NULL
);
CREATE INDEX spending_limits_pair ON spending_limits (account_id, asset, kind, created_at);
