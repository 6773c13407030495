-- Version 11: a version per account x asset (issue 18, conditional writes).
--
-- One more for every change of the pair: each command that moves it and each
-- deadline (hold or lot expiry) applied to it (docs/design.md, "Versions").
-- Each such change is one ledger transaction, so a pair's version is the
-- number of transactions that moved it (`ledger verify`, versions_count_changes),
-- and existing pairs start there. It lives on the balances row, which every
-- change of the pair writes anyway: no new row, no new hot spot.
ALTER TABLE balances ADD COLUMN version bigint NOT NULL DEFAULT 0 CHECK (version >= 0);

-- One scan of the journal, inside the migration's transaction.
UPDATE balances b SET version = e.changes
FROM (SELECT account_id, asset, count(DISTINCT transaction_id) AS changes
      FROM entries WHERE bucket <> 'system' GROUP BY 1, 2) AS e
WHERE b.account_id = e.account_id AND b.asset = e.asset;
