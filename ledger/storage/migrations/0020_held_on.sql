-- Version 20: every account a split hold draws on, as a column (issue 18;
-- docs/design.md, "Shared pools").
--
-- A hold split over three levels (member -> team -> top, each with lots) is
-- filed under the top (account_id), for the member (member_id); nothing in
-- either column names the team, whose lots it holds too. held_on lists the
-- accounts, other than account_id, whose lots the hold's allocations name
-- (allocations[].account_id, distinct, in byte order as Python sorts them):
-- empty for a hold on one account's lots, which is nearly every hold, so those
-- need no backfill and no index entry. The writer writes it with the row
-- (ledger/storage/postgres.py _SAVE, at every save of the row); the accounts
-- a hold draws on are fixed when it is made.
--
-- Read by ListReservations (an account's list shows the holds drawing on it)
-- and by VoidGrant's load (a voided lot's holds), through the partial GIN index
-- below. fastupdate off: a GIN scan with a pending list takes a predicate lock
-- on the whole index under SERIALIZABLE, and the index only holds split holds.
--
-- Rolling upgrade: ADD COLUMN with a constant default does not rewrite the
-- table, and the old release never names the column. The backfill scans
-- `reservations` (open and recently closed holds: closed ones are archived)
-- once, and updates only the rows whose allocations name an account (split
-- spends, made since version 16). A split hold made by an OLD writer after
-- this migration has an empty held_on: `ledger verify` reports it under
-- reservation_held_on; re-run the UPDATE below to repair
-- (docs/operations.md, "Upgrades and migrations without downtime").
ALTER TABLE reservations ADD COLUMN held_on text[] NOT NULL DEFAULT '{}';

UPDATE reservations SET held_on = ARRAY(
    SELECT DISTINCT (a->>'account_id') COLLATE "C" FROM jsonb_array_elements(allocations) AS a
    WHERE a->>'account_id' <> reservations.account_id ORDER BY 1)
WHERE held_on IS DISTINCT FROM ARRAY(
    SELECT DISTINCT (a->>'account_id') COLLATE "C" FROM jsonb_array_elements(allocations) AS a
    WHERE a->>'account_id' <> reservations.account_id ORDER BY 1);

CREATE INDEX IF NOT EXISTS reservations_held_on ON reservations USING gin (held_on)
    WITH (fastupdate = off) WHERE held_on <> '{}';
