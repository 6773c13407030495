-- ListReservations (`ledger reservations ACCOUNT`): an account's open
-- reservations, oldest first, without scanning the table. Partial, like
-- reservations_due: only open reservations are in it, so it stays as small as
-- the number of holds in flight and a Settle/Release/expiry leaves it
-- (no index maintenance beyond the insert of each Reserve). Listing closed
-- or expired ones reads the account's reservations without it.
-- Building it scans reservations once and blocks their writes meanwhile
-- (a plain CREATE INDEX inside the migration transaction): on a very large
-- table, build it first with CREATE INDEX CONCURRENTLY under this name
-- (docs/operations.md, "Upgrades and migrations").
CREATE INDEX IF NOT EXISTS reservations_account_open
    ON reservations (account_id, created_at, reservation_id) WHERE state = 'open';
