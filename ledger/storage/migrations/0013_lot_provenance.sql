-- Version 13: where a lot's credits came from, what they cost, and the spend
-- order that takes them (issue 23).
--
-- category: paid, promotional, allowance, rollover, refund, or a caller's token
-- "x_..." (ledger/domain/commands.py). Lots made before this version are "paid".
-- spend_rank: the category's place in the spend order at equal priority and
-- expiry (ledger/domain/model.py spend_rank(): promotional 0, rollover 1,
-- allowance 2, refund 3, caller tokens 4, paid 5), written with the lot so that
-- the index below orders the lots exactly as the rules do (Lot.spend_order).
-- unit_cost_micros: cost basis of one credit in micros of cost_currency (ISO 4217).
ALTER TABLE lots ADD COLUMN category text NOT NULL DEFAULT 'paid';
ALTER TABLE lots ADD COLUMN spend_rank smallint NOT NULL DEFAULT 5;
ALTER TABLE lots ADD COLUMN unit_cost_micros bigint CHECK (unit_cost_micros >= 0);
ALTER TABLE lots ADD COLUMN cost_currency text NOT NULL DEFAULT '';
-- A refund into an expired lot made a lot of its own (rules._refund_lot): those
-- were named by source "refund" and never had a grant entry.
UPDATE lots SET category = 'refund', spend_rank = 3
WHERE source = 'refund'
  AND NOT EXISTS (SELECT 1 FROM entries e WHERE e.lot_id = lots.lot_id AND e.movement = 'grant');

-- A pair's live lots in spend order: priority, soonest expiry (NULL, never,
-- sorts last as in Python), category rank, oldest, id.
DROP INDEX lots_spend_order;
CREATE INDEX lots_spend_order
    ON lots (account_id, asset, priority, expires_at, spend_rank, created_at, lot_id)
    WHERE remaining > 0;
