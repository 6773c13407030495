-- Version 5: one view of a pair at an instant (issue 13).
--
-- Held credits written off because their lot expired get their own column
-- (they were counted in `released`, which the contract defines as "released
-- back to available"); each allocation says so too, with named fields.
ALTER TABLE reservations ADD COLUMN expired bigint NOT NULL DEFAULT 0 CHECK (expired >= 0);
-- The leg's place in its ReserveGroup request: GetReservationGroup answers in that order.
ALTER TABLE reservations ADD COLUMN leg_index integer NOT NULL DEFAULT 0;
ALTER TABLE reservations ADD CONSTRAINT reservations_within_amount
    CHECK (settled + released + expired <= amount) NOT VALID;

-- Existing write-offs of held credits, taken out of `released` (from the journal).
UPDATE reservations r SET expired = w.amount, released = r.released - w.amount
FROM (SELECT reservation_id, -sum(amount) AS amount FROM entries
      WHERE movement = 'lot_expiry' AND bucket = 'held' AND reservation_id IS NOT NULL
      GROUP BY reservation_id) AS w
WHERE r.reservation_id = w.reservation_id;

-- Allocations: [lot_id, held, settled, released, refunded] -> named fields, `held`
-- (what was taken from the lot, not the current hold) named `drawn`.
UPDATE reservations r SET allocations = (
    SELECT coalesce(jsonb_agg(jsonb_build_object(
        'lot_id', x.a->>0,
        'drawn', (x.a->>1)::int8,
        'settled', (x.a->>2)::int8,
        'released', (x.a->>3)::int8 - coalesce(w.amount, 0),
        'refunded', (x.a->>4)::int8,
        'expired', coalesce(w.amount, 0)) ORDER BY x.n), '[]'::jsonb)
    FROM jsonb_array_elements(r.allocations) WITH ORDINALITY AS x(a, n)
    LEFT JOIN LATERAL (
        SELECT -sum(e.amount) AS amount FROM entries e
        WHERE e.reservation_id = r.reservation_id AND e.lot_id = (x.a->>0)::uuid
          AND e.movement = 'lot_expiry' AND e.bucket = 'held') AS w ON true)
WHERE jsonb_typeof(r.allocations -> 0) = 'array';
ALTER TABLE reservations VALIDATE CONSTRAINT reservations_within_amount;

-- Every rule and read loads a pair's overdue holds (rules.catch_up).
CREATE INDEX reservations_open_pair ON reservations (account_id, asset, expires_at)
    WHERE state = 'open';
-- A pair's live lots in spend order (priority, soonest expiry, oldest): a command
-- reads the first few, whatever the account's history.
CREATE INDEX lots_spend_order ON lots (account_id, asset, priority, expires_at, created_at, lot_id)
    WHERE remaining > 0;
DROP INDEX lots_spendable;
