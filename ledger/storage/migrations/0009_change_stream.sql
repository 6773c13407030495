-- Version 9: the change stream and balances as of any instant (issue 17).
--
-- 1. Each journal row carries the id of the transaction that wrote it
--    (pg_current_xact_id(), xid8: 64 bits, never wraps). The stream orders by
--    (xid, entry_id) and reads only rows below the oldest transaction still
--    running (pg_snapshot_xmin of the reader's snapshot): every transaction
--    that could still commit has an xid at or above anything already read, so
--    a reader never skips a row that commits late, and resuming after a
--    position is exact (docs/design.md, "The change stream"). Nothing is
--    written that every transaction writes: the xid is the transaction's own.
--    Existing rows get xid 1 (before every real transaction id, in entry order),
--    added as a constant default, so this needs no rewrite of the table; the
--    default then becomes the writing transaction's id.
ALTER TABLE entries ADD COLUMN xid xid8 NOT NULL DEFAULT '1'::xid8;
ALTER TABLE entries ALTER COLUMN xid SET DEFAULT pg_current_xact_id();

-- 2. Who wrote the row and why: the command's caller and idempotency key (empty
--    for what time did: expiries applied by catch_up), and, for those, the
--    instant they took effect (a hold's or a lot's deadline), which can be
--    before the row was written (docs/design.md, "Time").
ALTER TABLE entries ADD COLUMN caller text NOT NULL DEFAULT '';
ALTER TABLE entries ADD COLUMN idempotency_key text NOT NULL DEFAULT '';
ALTER TABLE entries ADD COLUMN effective_at timestamptz;

-- 3. The balance of the row's account x asset right after it (customer rows
--    only; NULL on the system accounts' rows, which have no balance). Written
--    by the writer from its working set as each transfer applies; `ledger
--    verify` checks them against the running sums of the entries.
ALTER TABLE entries ADD COLUMN available_after int8;
ALTER TABLE entries ADD COLUMN reserved_after int8;
ALTER TABLE entries ADD COLUMN granted_after int8;
ALTER TABLE entries ADD COLUMN settled_after int8;
ALTER TABLE entries ADD COLUMN refunded_after int8;
ALTER TABLE entries ADD COLUMN expired_after int8;

-- Existing rows: their running sums, as verify derives balances from entries.
-- The journal is immutable; this one backfill is the only update it ever gets.
ALTER TABLE entries DISABLE TRIGGER entries_no_update_delete;
UPDATE entries e SET
    available_after = s.available, reserved_after = s.reserved, granted_after = s.granted,
    settled_after = s.settled, refunded_after = s.refunded, expired_after = s.expired
FROM (
    SELECT entry_id,
        coalesce(sum(amount) FILTER (WHERE bucket = 'available') OVER w, 0) AS available,
        coalesce(sum(amount) FILTER (WHERE bucket = 'held') OVER w, 0) AS reserved,
        least(coalesce(sum(amount) FILTER (WHERE movement = 'grant') OVER w, 0),
              9223372036854775807) AS granted,
        least(coalesce(-sum(amount) FILTER (WHERE movement = 'settle') OVER w, 0),
              9223372036854775807) AS settled,
        least(coalesce(sum(amount) FILTER (WHERE movement = 'refund') OVER w, 0),
              9223372036854775807) AS refunded,
        least(coalesce(-sum(amount) FILTER (WHERE movement = 'lot_expiry') OVER w, 0),
              9223372036854775807) AS expired
    FROM entries WHERE bucket <> 'system'
    WINDOW w AS (PARTITION BY account_id, asset ORDER BY entry_id)
) AS s
WHERE e.entry_id = s.entry_id;
ALTER TABLE entries ENABLE TRIGGER entries_no_update_delete;

-- The stream's order (WatchTransactions reads pages of it after a position).
CREATE INDEX IF NOT EXISTS entries_stream ON entries (xid, entry_id);
-- A pair's rows in commit order and in time: GetBalance as_of (a position or an
-- instant) and GetStatement read one row or one range of these, whatever the
-- account's history. Customer rows only (system accounts have no balance).
CREATE INDEX IF NOT EXISTS entries_pair_position ON entries (account_id, asset, xid, entry_id)
    WHERE bucket <> 'system';
CREATE INDEX IF NOT EXISTS entries_pair_time ON entries (account_id, asset, created_at, entry_id)
    WHERE bucket <> 'system';
