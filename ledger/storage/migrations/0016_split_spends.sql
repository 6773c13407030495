-- Version 16: a spend split over a member's own lots and its pools' (issue 18;
-- docs/design.md, "Shared pools").
--
-- A Reserve or Charge of a member draws its own spendable lots first, then its
-- nearest pool's, then the next pool's. The one reservation is filed under the
-- farthest account whose lots fund it (account_id), for the member that spent
-- (member_id); each allocation on another account's lot names that account in
-- its jsonb (allocations[].account_id; absent: the reservation's account), so
-- no column changes. Every funding pair's load finds the hold among its own or
-- its ancestors' holds (reservations_open_pair).
--
-- What the member spent, found by the member: ListReservations of an account
-- lists the reservations held on its pair and those it spent from a pool's
-- (member_id), and a VoidGrant of a member's lot loads the member's split
-- holds. Partial: only spends a pool funded have a member_id. Building it
-- scans reservations once (see 0007 for a very large table: CREATE INDEX
-- CONCURRENTLY under this name first).
CREATE INDEX IF NOT EXISTS reservations_member
    ON reservations (member_id, created_at, reservation_id) WHERE member_id IS NOT NULL;
