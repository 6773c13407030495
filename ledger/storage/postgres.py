"""The ledger's tables in PostgreSQL, through asyncpg.

Every SQL statement the ledger issues is in this package. Mutations run in
`batch()`: one SERIALIZABLE transaction that reads the rows a batch of
commands needs (a few set-based SELECTs) and writes every change back in one
statement (data-modifying CTEs over unnest() arrays).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from datetime import datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import orjson

from ledger.domain import codec, errors, limits
from ledger.domain.model import (
    Account,
    AlertEvent,
    BalanceAlert,
    BreakageLine,
    Bucket,
    Entry,
    JournalRow,
    Lot,
    Movement,
    Reservation,
    ReservationState,
    Schedule,
)
from ledger.domain.rules import PairKey, WorkingSet
from ledger.observability import metrics
from ledger.service.ports import (
    IdempotencyRecord,
    JournalFilter,
    SerializationConflict,
    StorageUnavailable,
    WriterFenced,
)
from ledger.storage import alerts as alert_sql
from ledger.storage import idempotency as idem
from ledger.storage import journal

T = TypeVar("T")

# SQLSTATEs that mean "run the transaction again".
_RETRYABLE = {"40001", "40P01"}
# The commit's outcome is unknown (CockroachDB's ambiguous result): re-running the
# batch is safe, since its idempotency records commit with its effects.
_AMBIGUOUS = {"40003"}
# Connection-level failures: the database is gone or restarting.
_UNAVAILABLE_STATES = {
    "57P01",
    "57P02",
    "57P03",
    "08000",
    "08003",
    "08006",
    "08001",
    "08004",
    "53300",
    # read_only_sql_transaction: this connection's node turned standby (a failover
    # demoted it). The connection is dropped; the next one finds the new primary.
    "25006",
}

# Also "nothing was done, try again", whatever the request (issue 13, item 5): a
# lock wait gave up (55P03: a lock_timeout an operator set) is contention; the
# server out of resources (class 53: disk full, out of memory, too many
# connections), a statement cancelled (57014: pg_cancel_backend, a
# statement_timeout) or failing I/O (class 58) makes the database unavailable.
_RETRYABLE_TOO = {"55P03"}
_UNAVAILABLE_CLASSES = ("53", "58")
_UNAVAILABLE_TOO = {"57014"}

_BEGIN = "BEGIN ISOLATION LEVEL SERIALIZABLE"
# ledger_writer_fence() (migration 0003) raises it when this session's writer term
# is not the current one: the batch must not commit (docs/design.md, fencing).
_FENCED = "LW001"

# Units of work outside the writer's batches (CreateAccount, reads, the sweeper's
# queries): how often one is re-run after losing a serialization race, as the
# writer does for its batches (ledger.service.writer.WriterSettings).
_UNIT_ATTEMPTS_MAX = 8
_UNIT_BACKOFF_BASE_S = 0.005
_UNIT_BACKOFF_MAX_S = 0.2

# The read endpoint's fence (PostgresStore._standby_read): the primary's flush
# position, then "has this standby replayed that far?" (NULL, so false, on a
# node that is not in recovery), asked again after each pause before giving up.
_FLUSH_LSN = "SELECT pg_current_wal_flush_lsn()::text"
_REPLAYED_PAST = "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)"
_FENCE_PAUSES_S = (0.002, 0.005, 0.01, 0.02, 0.0)

# The writer's two statements are keyed lookups and inserts, nothing else: with
# the planner held to index paths (and each pair's lookup kept a lookup, see
# _LOAD) their plan stays an index plan whatever the tables' statistics say (even
# empty and never analyzed, as on a fresh database with autovacuum off), so it
# is made once per connection instead of at every batch (~0.9 ms of PostgreSQL
# CPU each), and made again every _REPLAN_EVERY_S (below). SET, not SET LOCAL:
# it lasts as long as the writer holds the connection; the pool's RESET ALL
# undoes it on release. tests/integration/test_plans.py checks the plans.
_WRITER_PLANS = (
    "SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off;"
    " SET enable_hashjoin = off; SET enable_mergejoin = off"
)
# A generic plan is made on the tables as they are when it is made: on a new
# database, empty. Index paths alone do not make that plan safe later: which
# index, and which side of a join is scanned whole, were still chosen for empty
# tables (a lookup of a pair's active schedules scanning every active schedule).
# So the writer's connection drops its plans this often, with a COMMIT (no extra
# round trip), and the next batch plans again on the tables' current sizes:
# ~2 ms of planning every ten seconds.
_REPLAN_EVERY_S = 10.0
_REPLAN = "DISCARD PLANS"
# The same index paths for the batch read when a pool connection runs it for a
# read RPC (GetBalance and the others that see an account at an instant:
# snapshot(), breakage()), for that transaction only. The pool plans every
# execution (pool.py), and its planner, left free, hashed every balance of the
# ledger to find one account's (in the bench's mixed workload: 11,000 balances,
# 2-25 ms per GetBalance read; a read of one pair alone went from 2.7 to 1.4 ms
# with these settings, the rest being planning). tests/integration/test_plans.py.
_READ_PLANS_LOCAL = (
    "SET LOCAL enable_seqscan = off; SET LOCAL enable_hashjoin = off;"
    " SET LOCAL enable_mergejoin = off"
)
# snapshot() (GetBalance and the other reads of an account at an instant) runs
# the batch read, whose planning was ~1.5 ms of a GetBalance's ~2.1 ms
# (round eight, docs/performance.md): held to the same index paths, it
# uses the generic plan as the writer does, for that transaction only, and
# with the writer's re-plan policy per pool connection (_snapshot_plans), so a
# plan made on tables that have since grown is made again within
# _REPLAN_EVERY_S. breakage() keeps planning each execution: its range read is
# rare, and its plan is not held to a lookup per pair.
_SNAPSHOT_PLANS_LOCAL = f"{_READ_PLANS_LOCAL}; SET LOCAL plan_cache_mode = force_generic_plan"
# Pool connections whose re-plan time is remembered (by backend pid); past
# this many (connections come and go) the memory starts again: at worst an
# extra DISCARD PLANS on each connection. A pid of the primary equal to one of
# the read endpoint's shares an entry: at worst a plan kept longer, never a
# wrong answer (a plan changes the cost of a read, not its rows).
_READ_REPLAN_TRACKED_MAX = 1024

_BALANCE_COLS = (
    "account_id, asset, available, reserved, granted, settled, refunded, expired, version,"
    " floor, debt, cap_day, cap_month, cap_lifetime, cap_held, spent_day, day_start,"
    " spent_month, month_start, spent_total"
)
_LOT_COLS = (
    "lot_id, account_id, asset, amount, remaining, priority, source, expires_at, created_at,"
    " category, spend_rank, unit_cost_micros, cost_currency, schedule_id, period"
)
_SCHEDULE_COLS = (
    "schedule_id, account_id, asset, amount, unit, count, anchor, time_zone, ends_at, priority,"
    " category, lot_life_s, rollover, first_period, next_period, next_start, state, metadata,"
    " created_at, terms"
)
# The spend order of lots in SQL: the one of Lot.spend_order (index lots_spend_order).
_SPEND_ORDER = "priority, expires_at, spend_rank, created_at, lot_id"
_RES_COLS = (
    "reservation_id, account_id, asset, amount, settled, released, refunded, state, created_at,"
    " expires_at, metadata, group_id, leg_key, allocations, expired, leg_index, member_id"
)

# One statement reads everything a batch needs (one round trip instead of five).
# Rows come back as (kind, jsonb): i = idempotency record, r = reservation,
# a = account id, b = balance, l = lot, p = lot of a pair's spend-order prefix.
# What rules.catch_up needs to see a pair at the batch's instant ($7) is always
# whole: every due lot and every overdue open reservation of every pair, and the
# lots their allocations name. Live lots are read whole only for the pairs in
# $8/$9 (Grants count them); for the others only the first LOTS_LOADED_FIRST in
# spend order ($10), so a command's cost does not grow with an account's history
# (the writer reads the rest only when a command needs more: rules.LotsNotLoaded).
#
# Every per-pair lookup is a LATERAL subquery with OFFSET 0, which keeps the
# planner from pulling it up into a plain join: the writer's generic plan is
# made on the tables as they are at its first batch (empty, on a new database),
# and a pulled-up join planned there ran the other way round once the tables
# had grown: one scan of every active schedule, every overdue open hold or every
# live lot of the ledger, filtered against the batch's pairs (35 ms per read
# with 9,000 lots in the bench's setup). OFFSET 0 leaves one index lookup per
# pair whatever the statistics say (tests/integration/test_plans.py).
_LOAD = f"""
WITH byid AS (
    SELECT {_RES_COLS} FROM reservations WHERE reservation_id = ANY($3::uuid[])
), bylot AS (
    SELECT account_id, asset FROM lots WHERE lot_id = ANY($11::uuid[])
), bysched AS (
    SELECT {_SCHEDULE_COLS} FROM grant_schedules WHERE schedule_id = ANY($12::uuid[])
), pairs0 AS (
    SELECT * FROM unnest($4::text[], $5::text[]) AS p(account_id, asset)
    UNION SELECT account_id, asset FROM byid
    UNION SELECT member_id, asset FROM byid WHERE member_id IS NOT NULL
    UNION SELECT account_id, asset FROM bylot
    UNION SELECT account_id, asset FROM bysched
), pairs AS (
    -- Shared pools: the ancestors' pairs of every pair, which its spends may draw
    -- from (accounts.ancestors, at most POOL_DEPTH_MAX; empty for most accounts).
    SELECT * FROM pairs0
    UNION SELECT anc.account_id, p.asset FROM pairs0 p
    JOIN accounts a ON a.account_id = p.account_id
    CROSS JOIN LATERAL unnest(a.ancestors) AS anc(account_id)
), sched AS (
    -- The active schedules of every pair (catch_up issues their due periods),
    -- and the ones named by id.
    SELECT * FROM bysched
    UNION
    SELECT s.* FROM pairs CROSS JOIN LATERAL (
        SELECT {_SCHEDULE_COLS} FROM grant_schedules
        WHERE grant_schedules.account_id = pairs.account_id
          AND grant_schedules.asset = pairs.asset AND state = 'active'
        OFFSET 0  -- a lookup per pair (see the note above _LOAD)
    ) AS s
), res AS (
    SELECT * FROM byid
    UNION
    SELECT r.* FROM pairs CROSS JOIN LATERAL (
        SELECT {_RES_COLS} FROM reservations
        WHERE reservations.account_id = pairs.account_id AND reservations.asset = pairs.asset
          AND state = 'open' AND expires_at <= $7
        OFFSET 0  -- a lookup per pair (see the note above _LOAD)
    ) AS r
    UNION
    -- A voided lot's pair: every open hold on its lots (what it holds of the lot is
    -- not voidable): those filed under it, and those filed under a pool that draw
    -- on it too (held_on, migration 0020: a member's or a middle pool's lots).
    SELECT r.* FROM bylot CROSS JOIN LATERAL (
        SELECT {_RES_COLS} FROM reservations
        WHERE reservations.account_id = bylot.account_id AND reservations.asset = bylot.asset
          AND state = 'open'
        UNION ALL
        SELECT {_RES_COLS} FROM reservations
        WHERE held_on <> '{{}}' AND held_on @> ARRAY[bylot.account_id]
          AND reservations.asset = bylot.asset AND state = 'open'
    ) AS r
), whole AS (
    SELECT * FROM unnest($8::text[], $9::text[]) AS w(account_id, asset)
), counted AS (
    -- Pairs whose caps' counters a hold's end changes: the members of loaded holds;
    -- and every pair a loaded hold is split over (the accounts its allocations
    -- name): its expiry, seen from any of them, gives back on each.
    SELECT * FROM pairs UNION SELECT member_id, asset FROM res WHERE member_id IS NOT NULL
    UNION SELECT a->>'account_id', res.asset FROM res, jsonb_array_elements(res.allocations) AS a
    WHERE a ? 'account_id'
)
SELECT 'i' AS kind, jsonb_build_array(i.caller, i.key, i.method, encode(i.request_hash, 'hex'), i.outcome,
  i.expires_at)
FROM idempotency i JOIN unnest($1::text[], $2::text[]) AS k(caller, key)
  ON i.caller = k.caller AND i.key = k.key AND i.expires_at > $7::timestamptz
UNION ALL SELECT 'r', to_jsonb(res) FROM res
UNION ALL SELECT 'a', jsonb_build_array(accounts.account_id, accounts.ancestors) FROM accounts
WHERE account_id = ANY($6::text[])
UNION ALL SELECT 'b', to_jsonb(b) FROM (SELECT {_BALANCE_COLS} FROM balances JOIN counted USING (account_id, asset)) AS b
UNION ALL SELECT 'l', to_jsonb(l) FROM (
    -- = ANY(ARRAY(...)) keeps this an index scan: an IN (subquery) over the
    -- allocations' jsonb was estimated at 100 rows and hash-joined a full scan.
    SELECT {_LOT_COLS} FROM lots WHERE lot_id = ANY(ARRAY(
        SELECT (a->>'lot_id')::uuid FROM res, jsonb_array_elements(res.allocations) AS a))
    UNION
    SELECT {_LOT_COLS} FROM lots JOIN pairs USING (account_id, asset)
    WHERE lots.remaining > 0 AND lots.expires_at <= $7
    UNION
    SELECT l.* FROM whole CROSS JOIN LATERAL (
        SELECT {_LOT_COLS} FROM lots
        WHERE lots.account_id = whole.account_id AND lots.asset = whole.asset
          AND lots.remaining > 0
        OFFSET 0  -- a lookup per pair (see the note above _LOAD)
    ) AS l
    UNION
    SELECT {_LOT_COLS} FROM lots WHERE lot_id = ANY($11::uuid[])
    UNION
    -- The live lots of the schedules named by id (CancelGrantSchedule voids them);
    -- catch_up needs no other: a rollover starts from a due lot, loaded above.
    SELECT {_LOT_COLS} FROM lots WHERE lots.remaining > 0
      AND lots.schedule_id = ANY(ARRAY(SELECT schedule_id FROM bysched))
) AS l
UNION ALL SELECT 's', to_jsonb(sched) FROM sched
UNION ALL SELECT 'x', to_jsonb(x) FROM (
    SELECT a.account_id, a.asset, a.threshold, a.recovery, a.percent, a.basis, a.state, a.created_at,
           a.top_up_target, a.top_up_cap_month, a.top_up_pending, a.top_up_month,
           a.top_up_requested_month
    FROM balance_alerts a JOIN counted USING (account_id, asset)) AS x
UNION ALL SELECT 'p', to_jsonb(l) FROM pairs CROSS JOIN LATERAL (
    SELECT {_LOT_COLS} FROM lots
    WHERE lots.account_id = pairs.account_id AND lots.asset = pairs.asset AND lots.remaining > 0
    ORDER BY {_SPEND_ORDER} LIMIT $10
) AS l
"""

# The whole batch's writes in one statement whose only data parameter is one
# JSON document: asyncpg encodes one string instead of 45 arrays (which cost
# more Python time than the rest of the batch), and PostgreSQL unpacks it with
# jsonb_to_recordset into typed columns.
_SAVE = f"""
WITH d AS (SELECT $1::jsonb AS doc), b AS (
    INSERT INTO balances ({_BALANCE_COLS})
    SELECT t.* FROM d, jsonb_to_recordset(d.doc->'b') AS t(
        account_id text, asset text, available int8, reserved int8, granted int8, settled int8,
        refunded int8, expired int8, version int8, floor int8, debt int8, cap_day int8,
        cap_month int8, cap_lifetime int8, cap_held int8, spent_day int8, day_start date,
        spent_month int8, month_start date, spent_total int8)
    ON CONFLICT (account_id, asset) DO UPDATE SET
        available = EXCLUDED.available, reserved = EXCLUDED.reserved, granted = EXCLUDED.granted,
        settled = EXCLUDED.settled, refunded = EXCLUDED.refunded, expired = EXCLUDED.expired,
        version = EXCLUDED.version, floor = EXCLUDED.floor, debt = EXCLUDED.debt,
        cap_day = EXCLUDED.cap_day, cap_month = EXCLUDED.cap_month,
        cap_lifetime = EXCLUDED.cap_lifetime, cap_held = EXCLUDED.cap_held,
        spent_day = EXCLUDED.spent_day, day_start = EXCLUDED.day_start,
        spent_month = EXCLUDED.spent_month, month_start = EXCLUDED.month_start,
        spent_total = EXCLUDED.spent_total
    RETURNING 1
), l AS (
    INSERT INTO lots ({_LOT_COLS})
    SELECT t.* FROM d, jsonb_to_recordset(d.doc->'l') AS t(
        lot_id uuid, account_id text, asset text, amount int8, remaining int8, priority int4,
        source text, expires_at timestamptz, created_at timestamptz, category text,
        spend_rank int2, unit_cost_micros int8, cost_currency text, schedule_id uuid, period int4)
    ON CONFLICT (lot_id) DO UPDATE SET remaining = EXCLUDED.remaining
    RETURNING 1
), r AS (
    INSERT INTO reservations ({_RES_COLS}, held_on)
    SELECT t.* FROM d, jsonb_to_recordset(d.doc->'r') AS t(
        reservation_id uuid, account_id text, asset text, amount int8, settled int8, released int8,
        refunded int8, state text, created_at timestamptz, expires_at timestamptz, metadata jsonb,
        group_id uuid, leg_key text, allocations jsonb, expired int8, leg_index int4,
        member_id text, held_on text[])
    ON CONFLICT (reservation_id) DO UPDATE SET
        settled = EXCLUDED.settled, released = EXCLUDED.released, refunded = EXCLUDED.refunded,
        state = EXCLUDED.state, allocations = EXCLUDED.allocations, expired = EXCLUDED.expired,
        held_on = EXCLUDED.held_on
    RETURNING 1
), s AS (
    INSERT INTO grant_schedules ({_SCHEDULE_COLS})
    SELECT t.* FROM d, jsonb_to_recordset(d.doc->'s') AS t(
        schedule_id uuid, account_id text, asset text, amount int8, unit text, count int4,
        anchor timestamptz, time_zone text, ends_at timestamptz, priority int4, category text,
        lot_life_s int8, rollover jsonb, first_period int4, next_period int4,
        next_start timestamptz, state text, metadata jsonb, created_at timestamptz, terms jsonb)
    ON CONFLICT (schedule_id) DO UPDATE SET
        next_period = EXCLUDED.next_period, next_start = EXCLUDED.next_start,
        state = EXCLUDED.state, ends_at = EXCLUDED.ends_at, terms = EXCLUDED.terms
    RETURNING 1
), e AS (
    INSERT INTO entries (transaction_id, account_id, asset, amount, movement, bucket,
                         reservation_id, lot_id, caller, idempotency_key, effective_at,
                         available_after, reserved_after, granted_after, settled_after,
                         refunded_after, expired_after, created_at)
    SELECT t.transaction_id, t.account_id, t.asset, t.amount, t.movement, t.bucket,
           t.reservation_id, t.lot_id, coalesce(t.caller, ''), coalesce(t.key, ''), t.effective_at,
           (t.after->>0)::int8, (t.after->>1)::int8, (t.after->>2)::int8, (t.after->>3)::int8,
           (t.after->>4)::int8, (t.after->>5)::int8, $2::timestamptz
    FROM d, jsonb_to_recordset(d.doc->'e') AS t(
        transaction_id uuid, account_id text, asset text, amount int8, movement text, bucket text,
        reservation_id uuid, lot_id uuid, caller text, key text, effective_at timestamptz,
        after jsonb)
    RETURNING 1
), x AS (
    UPDATE balance_alerts a SET state = t.state, basis = t.basis,
        top_up_pending = t.top_up_pending, top_up_month = t.top_up_month,
        top_up_requested_month = t.top_up_requested_month
    FROM d, jsonb_to_recordset(d.doc->'x') AS t(account_id text, asset text, state text, basis int8,
        top_up_pending jsonb, top_up_month date, top_up_requested_month int8)
    WHERE a.account_id = t.account_id AND a.asset = t.asset
    RETURNING 1
), v AS (
    INSERT INTO alert_events (transaction_id, account_id, asset, kind, available, threshold,
                              recovery, request_id, amount, created_at)
    SELECT t.transaction_id, t.account_id, t.asset, t.kind, t.available, t.threshold, t.recovery,
           t.request_id, t.amount, $2::timestamptz
    FROM d, jsonb_to_recordset(d.doc->'v') AS t(transaction_id uuid, account_id text, asset text,
        kind text, available int8, threshold int8, recovery int8, request_id uuid, amount int8)
    RETURNING 1
), sl AS (
    INSERT INTO spending_limits (transaction_id, account_id, asset, kind, value, created_at)
    SELECT t.*, $2::timestamptz FROM d, jsonb_to_recordset(d.doc->'sl') AS t(
        transaction_id uuid, account_id text, asset text, kind text, value int8)
    RETURNING 1
), i AS (
    INSERT INTO idempotency (caller, key, method, request_hash, outcome, created_at, expires_at)
    SELECT t.caller, t.key, t.method, decode(t.request_hash, 'hex'), t.outcome, $2::timestamptz,
           t.expires_at
    FROM d, jsonb_to_recordset(d.doc->'i') AS t(
        caller text, key text, method text, request_hash text, outcome jsonb, expires_at timestamptz)
    RETURNING 1
)
SELECT (SELECT count(*) FROM b) + (SELECT count(*) FROM l) + (SELECT count(*) FROM r)
     + (SELECT count(*) FROM e) + (SELECT count(*) FROM i) + (SELECT count(*) FROM s)
     + (SELECT count(*) FROM sl)
     + (SELECT count(*) FROM x) + (SELECT count(*) FROM v)
"""


# Closed reservations out of the hot table, oldest first, in one SERIALIZABLE
# statement: a concurrent batch that read one of them (a Refund) conflicts with
# it and one of the two retries, so a row never ends up in both tables.
_ARCHIVE_RESERVATIONS = """
WITH picked AS (
    SELECT reservation_id AS picked_id FROM reservations
    WHERE state <> 'open' AND expires_at < $1
    ORDER BY expires_at LIMIT $2
), gone AS (
    DELETE FROM reservations USING picked WHERE reservation_id = picked.picked_id
    RETURNING reservations.*
), kept AS (
    INSERT INTO reservations_archive (reservation_id, group_id, expires_at, archived_at, doc)
    SELECT g.reservation_id, g.group_id, g.expires_at, $3::timestamptz, to_jsonb(g) FROM gone AS g
    RETURNING 1
)
SELECT count(*) FROM kept
"""

# The archived rows of reservations (each as the row was, in jsonb) by id or group.
_ARCHIVED_RESERVATIONS = (
    "SELECT doc FROM reservations_archive"
    " WHERE reservation_id = ANY($1::uuid[]) OR group_id = $2::uuid"
)


def _translate(exc: BaseException) -> BaseException:
    """Map a driver error to the service's vocabulary (or leave it as a bug)."""
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", "") or ""
        if state in _RETRYABLE:
            return SerializationConflict(state)
        if state == _FENCED:
            return WriterFenced(str(exc))
        if state == "23505" and "idempotency" in str(getattr(exc, "constraint_name", "") or ""):
            # A concurrent transaction (another replica) recorded the same key first:
            # the retry will find its record and replay it.
            return SerializationConflict(state)
        if state in _UNAVAILABLE_STATES or state in _AMBIGUOUS or state.startswith("08"):
            return StorageUnavailable(f"database error {state}")
        if state in _RETRYABLE_TOO:
            return SerializationConflict(state)
        if state in _UNAVAILABLE_TOO or state.startswith(_UNAVAILABLE_CLASSES):
            return StorageUnavailable(f"database error {state}")
        return exc  # type: ignore[no-any-return]
    if isinstance(exc, asyncpg.InternalClientError):
        # The connection's protocol state broke (seen after pg_terminate_backend
        # under load): the connection is unusable, the database may be fine.
        return StorageUnavailable(f"connection broken: {type(exc).__name__}")
    if isinstance(
        exc,
        (
            OSError,
            asyncpg.InterfaceError,
            asyncpg.exceptions.ConnectionDoesNotExistError,
            TimeoutError,
            ConnectionError,
        ),
    ):
        return StorageUnavailable(type(exc).__name__)
    return exc


async def _guard(op: Awaitable[T]) -> T:
    try:
        return await op
    except Exception as exc:
        translated = _translate(exc)
        if translated is exc:
            raise
        raise translated from exc


async def _guard_call(fn: Callable[[], Awaitable[T]]) -> T:
    """_guard for a call on a pooled connection that may already be gone: when the
    server ends a connection, asyncpg hands it back to the pool and the next call
    on it raises InterfaceError at once, before there is anything to await (a
    batch whose connection died between its read and its save answered INTERNAL
    instead of being run again; tests/integration/test_writer_connection.py)."""
    try:
        return await fn()
    except Exception as exc:
        translated = _translate(exc)
        if translated is exc:
            raise
        raise translated from exc


# ListReservations: one literal statement per state filter, so that the open
# filter names `state = 'open'` and can use the partial index
# reservations_account_open (0007). $6 is "now": an open reservation past its
# expiry is listed as expired, as every read shows it. Rows come back as the
# batch load's do (to_jsonb, decoded by ledger.domain.codec).
# An account's reservations: filed under it (account_id), spent by it from a
# pool's lots (member_id, index reservations_member of 0016), or drawing on its
# lots though filed under an ancestor (held_on, index reservations_held_on of
# 0020: a middle pool of a three-level split). `held_on <> '{}'` is that
# partial index's predicate, named so the planner may use it.
_LIST_RES_FROM = (
    " FROM reservations WHERE (account_id = $1 OR member_id = $1"
    " OR (held_on <> '{}' AND held_on @> ARRAY[$1::text])) AND ($2 = '' OR asset = $2)"
    " AND ($3::timestamptz IS NULL OR (created_at, reservation_id) > ($3, $4::uuid))"
)
_LIST_RES_ORDER = " ORDER BY created_at, reservation_id LIMIT $5) AS r"
_LIST_RESERVATIONS: dict[ReservationState | None, tuple[str, bool]] = {
    None: (f"SELECT to_jsonb(r) FROM (SELECT {_RES_COLS}{_LIST_RES_FROM}{_LIST_RES_ORDER}", False),
    ReservationState.OPEN: (
        f"SELECT to_jsonb(r) FROM (SELECT {_RES_COLS}{_LIST_RES_FROM}"
        f" AND state = 'open' AND expires_at > $6{_LIST_RES_ORDER}",
        True,
    ),
    ReservationState.CLOSED: (
        f"SELECT to_jsonb(r) FROM (SELECT {_RES_COLS}{_LIST_RES_FROM}"
        f" AND state = 'closed'{_LIST_RES_ORDER}",
        False,
    ),
    ReservationState.EXPIRED: (
        f"SELECT to_jsonb(r) FROM (SELECT {_RES_COLS}{_LIST_RES_FROM}"
        f" AND (state = 'expired' OR (state = 'open' AND expires_at <= $6)){_LIST_RES_ORDER}",
        True,
    ),
}


# Breakage: the pair's write-offs (customer side: available, and held credits of
# an expired lot) of lots that expire in [$3, $4), by the lot's category and cost.
_BREAKAGE = """
SELECT l.category, l.cost_currency, l.unit_cost_micros, -sum(e.amount)::int8 AS credits
FROM entries e JOIN lots l USING (lot_id)
WHERE e.account_id = $1 AND e.asset = $2 AND e.movement = 'lot_expiry' AND e.bucket <> 'system'
  AND l.expires_at >= $3 AND l.expires_at < $4
GROUP BY 1, 2, 3
"""

# ListGrantSchedules: an account's schedules, oldest first (grant_schedules_account).
_LIST_SCHEDULES = (
    f"SELECT to_jsonb(s) FROM (SELECT {_SCHEDULE_COLS} FROM grant_schedules WHERE account_id = $1"
    " AND ($2::timestamptz IS NULL OR (created_at, schedule_id) > ($2, $3::uuid))"
    " ORDER BY created_at, schedule_id LIMIT $4) AS s"
)


def _reservation_doc(r: Reservation) -> dict[str, Any]:
    """A reservation for the save's jsonb (the group_id column is a uuid: none is NULL).

    held_on (migration 0020): the other accounts whose lots it holds, sorted;
    empty unless the spend was split over them."""
    return {
        **codec.reservation_to_dict(r),
        "group_id": r.group_id or None,
        "member_id": r.member_id or None,
        "held_on": sorted(r.held_on() - {r.account_id}),
    }


def _entry(row: asyncpg.Record) -> Entry:
    return Entry(
        entry_id=row["entry_id"],
        transaction_id=str(row["transaction_id"]),
        account_id=row["account_id"],
        asset=row["asset"],
        amount=row["amount"],
        movement=Movement(row["movement"]),
        bucket=Bucket(row["bucket"]),
        reservation_id=str(row["reservation_id"]) if row["reservation_id"] is not None else "",
        lot_id=str(row["lot_id"]) if row["lot_id"] is not None else "",
        created_at=row["created_at"],
    )


class PgBatch:
    """The queries of one batch transaction (see ledger.service.ports.BatchUnit)."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        cover_idempotency: Callable[[datetime, datetime], Awaitable[None]] | None = None,
    ) -> None:
        self._conn = conn
        # Makes sure a partition exists for a record's expires_at (see save()).
        self._cover_idempotency = cover_idempotency

    async def load(
        self,
        ws: WorkingSet,
        keys: list[tuple[str, str]],
        reservation_ids: set[str],
        pairs: set[PairKey],
        account_ids: set[str],
        whole_pairs: set[PairKey],
        lot_ids: frozenset[str] = frozenset(),
        schedule_ids: frozenset[str] = frozenset(),
    ) -> dict[tuple[str, str], IdempotencyRecord]:
        """Every row the batch reads, in one round trip; returns the idempotency records found.

        Pairs of the loaded reservations, their overdue holds and due lots, and the
        lots their allocations name, are included by the statement itself.
        """
        conn = self._conn
        rows = await _guard_call(
            lambda: conn.fetch(
                _LOAD,
                [k[0] for k in keys],
                [k[1] for k in keys],
                list(reservation_ids),
                [p[0] for p in pairs],
                [p[1] for p in pairs],
                list(account_ids),
                ws.now,
                [p[0] for p in whole_pairs],
                [p[1] for p in whole_pairs],
                limits.LOTS_LOADED_FIRST,
                list(lot_ids),
                list(schedule_ids),
            )
        )
        records: dict[tuple[str, str], IdempotencyRecord] = {}
        prefix: dict[PairKey, list[Lot]] = {}
        for kind, data in rows:
            if kind == "b":
                bal = codec.balance_from(data)
                ws.balances[(bal.account_id, bal.asset)] = bal
            elif kind == "p":
                lot = codec.lot_from(data)
                prefix.setdefault((lot.account_id, lot.asset), []).append(lot)
            elif kind == "l":
                ws.add_lot(codec.lot_from(data))
            elif kind == "r":
                ws.add_reservation(codec.reservation_from(data))
            elif kind == "a":
                account_id, ancestors = data
                ws.accounts.add(account_id)
                ws.ancestors[account_id] = codec.ancestors_from(ancestors)
            elif kind == "s":
                ws.add_schedule(codec.schedule_from(data))
            elif kind == "x":
                alert = codec.alert_from(data)
                ws.alerts[(alert.account_id, alert.asset)] = alert
            elif kind == "i":
                caller, key, method, request_hash, outcome, expires_at = data
                records[(caller, key)] = IdempotencyRecord(
                    caller,
                    key,
                    method,
                    bytes.fromhex(request_hash),
                    outcome,
                    datetime.fromisoformat(expires_at),
                )
        for pair, lots in prefix.items():
            for lot in lots:
                if lot.lot_id not in ws.lots:
                    ws.add_lot(lot)
            if len(lots) >= limits.LOTS_LOADED_FIRST and pair not in whole_pairs:
                ws.lot_horizon[pair] = max(lot.spend_order() for lot in lots)
        return records

    async def save(self, ws: WorkingSet, records: list[IdempotencyRecord]) -> None:
        """Write what `ws` changed since its last save, with `records`."""
        body = await self._document(ws, records)
        if body is not None:
            await self._write(body, ws.now)

    async def save_ahead(
        self, ws: WorkingSet, records: list[IdempotencyRecord]
    ) -> asyncio.Future[None]:
        """As save(), but return once the statement is sent, with the future of
        its completion: the caller may change `ws` meanwhile (the document is
        taken first) and must await the future before anything else runs on
        this transaction."""
        body = await self._document(ws, records)
        if body is None:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        task = asyncio.ensure_future(self._write(body, ws.now))
        await asyncio.sleep(0)  # the task's first step sends the statement
        return task

    async def _document(self, ws: WorkingSet, records: list[IdempotencyRecord]) -> bytes | None:
        """The save's one parameter: what `ws` changed since its last save (then
        marked saved), and `records`; None when there is nothing to write. Makes
        sure the idempotency partitions cover the records' expiries."""
        ws.close_transaction()  # the last transaction's alert crossings
        doc = {
            "b": [codec.balance_to_dict(ws.balances[k]) for k in sorted(ws.dirty_balances)],
            "l": [codec.lot_to_dict(ws.lots[i]) for i in sorted(ws.dirty_lots)],
            "r": [_reservation_doc(ws.reservations[i]) for i in sorted(ws.dirty_reservations)],
            "s": [codec.schedule_to_dict(ws.schedules[i]) for i in sorted(ws.dirty_schedules)],
            "e": [
                {
                    "transaction_id": p.transaction_id,
                    "account_id": p.account_id,
                    "asset": p.asset,
                    "amount": p.amount,
                    "movement": p.movement.value,
                    "bucket": p.bucket.value,
                    "reservation_id": p.reservation_id or None,
                    "lot_id": p.lot_id or None,
                    "caller": p.caller,
                    "key": p.idempotency_key,
                    "effective_at": p.effective_at,
                    "after": p.after,
                }
                for p in ws.postings
            ],
            "sl": [
                {
                    "transaction_id": tx,
                    "account_id": a,
                    "asset": asset,
                    "kind": kind,
                    "value": value,
                }
                for a, asset, kind, value, tx in ws.limit_changes
            ],
            "x": [
                {
                    "account_id": k[0],
                    "asset": k[1],
                    "state": a.state.value,
                    "basis": a.basis,
                    "top_up_pending": a.top_up_pending,
                    "top_up_month": a.top_up_month.isoformat() if a.top_up_month else None,
                    "top_up_requested_month": a.top_up_requested_month,
                }
                for k in sorted(ws.dirty_alerts)
                if (a := ws.alerts[k]) is not None
            ],
            "v": [
                {
                    "transaction_id": ev.transaction_id,
                    "account_id": ev.account_id,
                    "asset": ev.asset,
                    "kind": ev.kind.value,
                    "available": ev.available,
                    "threshold": ev.threshold,
                    "recovery": ev.recovery,
                    "request_id": ev.request_id or None,
                    "amount": ev.amount if ev.request_id else None,
                }
                for ev in ws.events
            ],
            "i": [
                {
                    "caller": r.caller,
                    "key": r.key,
                    "method": r.method,
                    "request_hash": r.request_hash.hex(),
                    "outcome": r.outcome,
                    "expires_at": _record_expiry(r),
                }
                for r in records
            ],
        }
        ws.mark_saved()
        if not any(doc.values()):
            return None
        # orjson writes datetimes as isoformat() does; bytes go to the jsonb codec as they are.
        body = orjson.dumps(doc)
        if records and self._cover_idempotency is not None:
            await self._cover_idempotency(ws.now, max(_record_expiry(r) for r in records))
        return body

    async def _write(self, body: bytes, now: datetime) -> None:
        try:
            await _guard_call(lambda: self._conn.fetchval(_SAVE, body, now))
        except asyncpg.CheckViolationError as exc:
            if "no partition of relation" not in str(exc):
                raise
            # A partition gone or never made behind the coverage this process saw
            # (dropped by hand, say): the same answer as a missing one, not INTERNAL.
            raise errors.DatabaseUnavailable(_NO_PARTITION, {}) from exc


_NO_PARTITION = (
    "the idempotency key store has no partition for this key's expiry yet:"
    " run `ledger maintain` as the database owner role (hourly); retry with"
    " the same idempotency key"
)


def _record_ts(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


def _record_expiry(r: IdempotencyRecord) -> datetime:
    if r.expires_at is None:
        raise ValueError(f"idempotency record {r.key!r} has no expires_at")
    return r.expires_at


@asynccontextmanager
async def _read_transaction(conn: asyncpg.Connection, settings: str) -> AsyncIterator[None]:
    """A read-only REPEATABLE READ transaction whose BEGIN carries `settings` in
    the same round trip (asyncpg's transaction() sends its BEGIN alone: one round
    trip more for every GetBalance)."""
    try:
        await conn.execute(f"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; {settings}")
        yield
    except BaseException:
        # Never back to the pool inside a transaction. A cancelled or broken
        # connection is terminated by the caller (_connection) anyway.
        with suppress(Exception):
            await conn.execute("ROLLBACK")
        raise
    await conn.execute("COMMIT")


class PostgresStore:
    """The Store of ledger.service.ports, on an asyncpg pool."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        acquire_timeout_s: float = 2.0,
        idempotency_partition: timedelta = timedelta(hours=12),
        read_pool: asyncpg.Pool | None = None,
    ) -> None:
        self._pool = pool
        # Synchronous standbys for the reads that may go there (see _standby_read).
        self._read_pool = read_pool
        # The idempotency table's partition grid, and how far its partitions
        # are known to reach (ledger/storage/idempotency.py).
        self._idem_partition = idempotency_partition
        # [from, until): partitions exist for every expires_at in it (as of the last
        # maintenance; `from` is the `now` it dropped up to).
        self._idem_covered: tuple[datetime, datetime] | None = None
        # Whether this role may create and drop the partitions (it owns the table);
        # the least-privilege serving role may not (check_partition_rights).
        self._may_maintain = True
        self._acquire_timeout_s = acquire_timeout_s
        self._waiting = 0
        self._writer_conn: asyncpg.Connection | None = None
        # The change stream's reads (horizon polls, pages): one held connection
        # while it is free, the pool when it is busy (_stream_read).
        self._stream_conn: asyncpg.Connection | None = None
        self._stream_lock = asyncio.Lock()
        # The writer's connection while it holds a transaction that batch() opened
        # for the next batch (see batch()); None otherwise.
        self._begun: asyncpg.Connection | None = None
        # Set by ping(): while the last health check failed, calls fail at once with
        # UNAVAILABLE instead of each waiting out a connect timeout.
        self.reachable = True
        # The elected writer's term (set_writer_term): when set, every batch's COMMIT
        # is preceded, in the same round trip, by the fence check of that term.
        self._writer_term: int | None = None
        self._commit = "COMMIT"
        # When the writer's connection next drops its plans (_REPLAN_EVERY_S).
        self._replan_at = 0.0
        # The same for each pool connection's snapshot reads, by backend pid.
        self._read_replan_at: dict[int, float] = {}

    async def set_writer_term(self, term: int) -> None:
        """Fence every later batch with `term`; a new writer connection carries it."""
        self._writer_term = term
        self._commit = "SELECT ledger_writer_fence(); COMMIT"
        await self._drop_writer_connection()

    def pool_stats(self) -> tuple[int, int, int, int]:
        """(most connections it opens, connections, in use, tasks waiting for one)."""
        size = self._pool.get_size()
        return self._pool.get_max_size(), size, size - self._pool.get_idle_size(), self._waiting

    @asynccontextmanager
    async def _connection(self, fail_fast: bool = True) -> AsyncIterator[asyncpg.Connection]:
        if fail_fast and not self.reachable:
            raise StorageUnavailable("database unreachable (last health check failed)")
        self._waiting += 1
        try:
            conn = await self._pool.acquire(timeout=self._acquire_timeout_s)
        except Exception as exc:
            raise StorageUnavailable(f"no database connection: {type(exc).__name__}") from exc
        finally:
            self._waiting -= 1
        try:
            yield conn
        except (StorageUnavailable, asyncio.CancelledError) as exc:
            # Timed out, cancelled or broken mid-query: its state is unknown, never reuse it.
            with suppress(Exception):
                conn.terminate()
            await self._expire_if_silent(exc)
            raise
        finally:
            with suppress(Exception):
                # Bounded: the reset on release must not hang on a node that stopped
                # answering (asyncpg terminates the connection when it times out).
                await self._pool.release(conn, timeout=self._acquire_timeout_s)

    async def _writer_connection(self) -> asyncpg.Connection:
        """The writer's own connection, held across batches: no pool round trips
        (acquire, and the reset query on release) on the hot path."""
        conn = self._writer_conn
        if conn is not None:
            try:
                if not conn.is_closed():
                    return conn
            except asyncpg.InterfaceError:
                pass  # the pool took it back (it broke): get another
            self._writer_conn = None
        if not self.reachable:
            raise StorageUnavailable("database unreachable (last health check failed)")
        try:
            conn = await self._pool.acquire(timeout=self._acquire_timeout_s)
        except Exception as exc:
            raise StorageUnavailable(f"no database connection: {type(exc).__name__}") from exc
        try:
            await _guard(conn.execute(_WRITER_PLANS))
            if self._writer_term is not None:
                await _guard(
                    conn.execute(
                        "SELECT set_config('ledger.writer_term', $1, false)",
                        str(self._writer_term),
                    )
                )
        except BaseException:
            with suppress(Exception):
                conn.terminate()
                await self._pool.release(conn)
            raise
        self._writer_conn = conn
        self._replan_at = time.monotonic() + _REPLAN_EVERY_S
        return conn

    def _commit_sql(self) -> str:
        """This batch's COMMIT: after the fence check, and after dropping the
        connection's plans when they are _REPLAN_EVERY_S old."""
        if time.monotonic() < self._replan_at:
            return self._commit
        self._replan_at = time.monotonic() + _REPLAN_EVERY_S
        return f"{self._commit.removesuffix('COMMIT')}{_REPLAN}; COMMIT"

    async def _drop_writer_connection(self) -> None:
        conn, self._writer_conn = self._writer_conn, None
        if conn is not None:
            with suppress(Exception):
                conn.terminate()
                await self._pool.release(conn)

    @asynccontextmanager
    async def batch(self, more_waiting: Callable[[], bool] | None = None) -> AsyncIterator[PgBatch]:
        """One SERIALIZABLE transaction on the writer's connection.

        Plain BEGIN/COMMIT rather than asyncpg's Transaction object: when a batch
        was cancelled inside Transaction.start() after BEGIN had run, asyncpg
        kept the connection marked as in a transaction, every later batch
        became a SAVEPOINT, and its "commit" committed nothing (found by the
        torture run, tests/faults/test_cancelled_batch.py). The server's own
        transaction status is checked before every batch instead.

        When `more_waiting()` is true at commit time, the next batch's BEGIN
        travels with this COMMIT ("COMMIT; BEGIN ...", one round trip instead
        of two). That is safe because COMMIT follows a statement of this
        transaction that just succeeded on this connection, so it either
        commits or raises (a failed transaction is the only way COMMIT answers
        ROLLBACK without an error); the BEGIN takes no snapshot until the next
        batch's first statement. Only a transaction opened that way is reused:
        `_begun` is cleared as each batch starts and set only after that
        round trip succeeded, so anything else still open is rolled back.
        """
        conn = await self._writer_connection()
        begun, self._begun = self._begun is conn, None
        try:
            if not (begun and conn.is_in_transaction()):
                if conn.is_in_transaction():
                    await _guard_call(lambda: conn.execute("ROLLBACK"))  # no nesting in a leftover
                await _guard_call(lambda: conn.execute(_BEGIN))
            yield PgBatch(conn, self._cover_idempotency)
            commit = self._commit_sql()
            if more_waiting is not None and more_waiting():
                await _guard_call(lambda: conn.execute(f"{commit}; {_BEGIN}"))
                self._begun = conn
                return
            status = await _guard_call(lambda: conn.execute(commit))
            if status != "COMMIT":  # PostgreSQL answers ROLLBACK when the transaction had failed
                raise SerializationConflict(f"COMMIT answered {status}")
        except BaseException as exc:
            await self._abandon(conn, exc)
            raise

    async def _expire_if_silent(self, exc: BaseException) -> None:
        """A statement that got no answer: the node hangs or is cut off, and so are the
        pool's other connections to it. Replace them all (asyncpg reconnects each on its
        next acquire, racing the hosts again) rather than let each cost one more timeout."""
        if isinstance(exc, StorageUnavailable) and isinstance(exc.__cause__, TimeoutError):
            await self._pool.expire_connections()

    async def _abandon(self, conn: asyncpg.Connection, exc: BaseException) -> None:
        """After a failed batch: roll back on a sound connection, else drop it."""
        await self._expire_if_silent(exc)
        if isinstance(exc, Exception) and not isinstance(exc, StorageUnavailable):
            try:
                if not conn.is_closed() and conn.is_in_transaction():
                    async with asyncio.timeout(1.0):
                        await conn.execute("ROLLBACK")
                if not conn.is_in_transaction():
                    return
            except asyncio.CancelledError:
                # Stopped during the ROLLBACK: the stop goes on, never swallowed
                # (tests/faults/test_writer_stop.py), and the connection is dropped.
                await self._drop_writer_connection()
                raise
            except Exception:
                pass
        await self._drop_writer_connection()  # cancelled, broken or unsure: never reuse it

    async def close(self) -> None:
        """Give the writer's and the stream's connections back before the pool closes."""
        for conn in (self._writer_conn, self._stream_conn):
            if conn is not None:
                with suppress(Exception):
                    await self._pool.release(conn)
        self._writer_conn = self._stream_conn = None

    async def _stream_read(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """A change-stream read on the connection the stream holds: streams poll the
        horizon and read a page at each of its changes (20 times a second under
        load), and each pooled read cost two more round trips (acquire, and the
        reset query on release), on the writer's process and in PostgreSQL. One
        statement, no transaction, so nothing is left on the connection. While it
        is busy (another filter's page) the read goes to the pool: reads of
        different filters never queue behind each other."""
        if self._stream_lock.locked():
            return await self._read(fn)
        async with self._stream_lock:
            conn = self._stream_conn
            try:
                usable = conn is not None and not conn.is_closed()
            except asyncpg.InterfaceError:
                usable = False  # the pool took it back (it broke)
            if conn is None or not usable:
                self._stream_conn = None
                if not self.reachable:
                    raise StorageUnavailable("database unreachable (last health check failed)")
                try:
                    conn = await self._pool.acquire(timeout=self._acquire_timeout_s)
                except Exception as exc:
                    raise StorageUnavailable(
                        f"no database connection: {type(exc).__name__}"
                    ) from exc
                self._stream_conn = conn
            try:
                return await _guard(fn(conn))
            except SerializationConflict:
                pass  # re-run as any read is (below, bounded), the connection is fine
            except (StorageUnavailable, asyncio.CancelledError) as exc:
                # Timed out, cancelled or broken mid-query: never reuse it.
                await self._drop_stream_connection()
                if isinstance(exc, asyncio.CancelledError) or isinstance(
                    exc.__cause__, TimeoutError
                ):
                    await self._expire_if_silent(exc)
                    raise
                # The held connection had broken while idle (its backend ended):
                # the read is one statement and changed nothing, so it runs again
                # once, on a pooled connection; a database that is really gone
                # fails there too.
        return await self._read(fn)

    async def _drop_stream_connection(self) -> None:
        conn, self._stream_conn = self._stream_conn, None
        if conn is not None:
            with suppress(Exception):
                conn.terminate()
                await self._pool.release(conn)

    async def _read(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run `fn` (one whole unit of work: a statement or a transaction) on a pooled
        connection. A lost serialization race (two CreateAccounts of one id at
        SERIALIZABLE, a deadlock) re-runs the whole unit, bounded and jittered;
        SerializationConflict only when every attempt lost (issue 13, item 5)."""
        for attempt in range(1, _UNIT_ATTEMPTS_MAX + 1):
            try:
                async with self._connection() as conn:
                    return await _guard(fn(conn))
            except SerializationConflict as exc:
                if attempt == _UNIT_ATTEMPTS_MAX:
                    exc.attempts = attempt
                    raise
            # Back off without holding a connection: others may need it meanwhile.
            metrics.SERIALIZATION_RETRIES.inc()
            backoff_s = min(_UNIT_BACKOFF_MAX_S, _UNIT_BACKOFF_BASE_S * 2**attempt)
            await asyncio.sleep(backoff_s * random.random())
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _standby_read(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """A read on the read endpoint when there is one and it has caught up; else on the primary.

        The fence: the primary's WAL flush position, taken first, covers every
        commit acknowledged before this read began (a commit is flushed before it
        is acknowledged). The standby serves the read only once it has replayed
        that far, so a standby that fell out of the synchronous set (a node
        rejoining after a failover, a lagging one) never answers with old data;
        a node that is not in recovery is never used either (it may be an old
        primary cut off from the cluster). With synchronous_commit = remote_apply
        (checked at start) the synchronous standbys are there already, or within
        the few milliseconds of commits in flight.

        The read falls back to the primary only when `fn` has not run: a
        failure inside it is UNAVAILABLE (reads are safe to retry), so that
        `fn` never fills its results from two snapshots.

        Errors: StorageUnavailable.
        """
        if self._read_pool is None:
            return await self._read(fn)
        fence = await self._read(lambda conn: conn.fetchval(_FLUSH_LSN))
        try:
            conn = await self._read_pool.acquire(timeout=self._acquire_timeout_s)
        except Exception:
            return await self._read(fn)
        started = False
        try:
            if await self._caught_up(conn, fence):
                started = True
                return await _guard(fn(conn))
        except StorageUnavailable:
            with suppress(Exception):
                conn.terminate()
            if started:
                raise
        finally:
            with suppress(Exception):
                await self._read_pool.release(conn, timeout=self._acquire_timeout_s)
        return await self._read(fn)

    @staticmethod
    async def _caught_up(conn: asyncpg.Connection, fence: str) -> bool:
        for pause_s in _FENCE_PAUSES_S:
            if await _guard(conn.fetchval(_REPLAYED_PAST, fence)):
                return True
            await asyncio.sleep(pause_s)
        return False

    async def create_account(
        self, account_id: str, metadata: dict[str, str], now: datetime, parent_id: str = ""
    ) -> Account | None:
        """None when the id is taken. Errors: AccountNotFound (the parent),
        PoolDepthExceeded (the parent has POOL_DEPTH_MAX ancestors already)."""

        async def run(conn: asyncpg.Connection) -> Account | None:
            async with conn.transaction(isolation="serializable"):
                ancestors: list[str] = []
                if parent_id:
                    up = await conn.fetchval(
                        "SELECT ancestors FROM accounts WHERE account_id = $1", parent_id
                    )
                    if up is None:
                        raise errors.AccountNotFound(
                            f"parent account {parent_id} not found",
                            {"account_id": parent_id, "field": "parent_id"},
                        )
                    if len(up) >= limits.POOL_DEPTH_MAX:
                        raise errors.PoolDepthExceeded(
                            f"{parent_id} already has {len(up)} ancestors; a pool is at most"
                            f" {limits.POOL_DEPTH_MAX} levels above a member (POOL_DEPTH_MAX)",
                            {"parent_id": parent_id, "limit": str(limits.POOL_DEPTH_MAX)},
                        )
                    ancestors = [parent_id, *up]
                row = await conn.fetchrow(
                    "INSERT INTO accounts (account_id, metadata, created_at, parent_id, ancestors)"
                    " VALUES ($1, $2::jsonb, $3, $4, $5::text[])"
                    " ON CONFLICT (account_id) DO NOTHING RETURNING account_id, metadata, created_at",
                    account_id,
                    json.dumps(metadata),
                    now,
                    parent_id or None,
                    ancestors,
                )
            if row is None:
                return None
            return Account(
                row["account_id"], dict(row["metadata"]), row["created_at"], [], parent_id
            )

        return await self._read(run)

    async def get_account(self, account_id: str) -> Account | None:
        """The account without its balances (snapshot() reads those as of an instant)."""
        row = await self._standby_read(
            lambda conn: conn.fetchrow(
                "SELECT account_id, metadata, created_at, parent_id FROM accounts"
                " WHERE account_id = $1",
                account_id,
            )
        )
        if row is None:
            return None
        return Account(
            row["account_id"], dict(row["metadata"]), row["created_at"], [], row["parent_id"] or ""
        )

    async def snapshot(
        self,
        ws: WorkingSet,
        *,
        pairs: set[PairKey] | None = None,
        account_id: str = "",
        reservation_ids: set[str] | None = None,
        group_id: str = "",
        whole_pairs: set[PairKey] | None = None,
        schedule_ids: set[str] | None = None,
    ) -> None:
        """Read into `ws`, in one consistent snapshot, what rules.catch_up needs to
        see the pairs at `ws.now`: the batch's own load statement, read-only.
        `account_id` adds the account and every pair it has; `group_id` adds the
        group's reservations (and so their pairs)."""
        pairs = set(pairs or ())
        reservation_ids = set(reservation_ids or ())
        whole = set(whole_pairs or ())

        async def run(conn: asyncpg.Connection) -> None:
            async with _read_transaction(conn, self._snapshot_plans(conn)):
                if account_id:
                    # With the assets of its active schedules: one whose anchor is
                    # still ahead has no balance row until its first period starts.
                    assets = await conn.fetch(
                        "SELECT asset FROM balances WHERE account_id = $1 UNION SELECT asset"
                        " FROM grant_schedules WHERE account_id = $1 AND state = 'active'",
                        account_id,
                    )
                    pairs.update((account_id, r["asset"]) for r in assets)
                if group_id:
                    legs = await conn.fetch(
                        "SELECT reservation_id FROM reservations WHERE group_id = $1::uuid",
                        group_id,
                    )
                    reservation_ids.update(str(r["reservation_id"]) for r in legs)
                await PgBatch(conn).load(
                    ws,
                    [],
                    reservation_ids,
                    pairs,
                    {account_id} if account_id else {p[0] for p in pairs},
                    whole,
                    schedule_ids=frozenset(schedule_ids or ()),
                )
                # Archived reservations still answer (docs/operations.md, "Retention"):
                # closed, so there is nothing to catch up on.
                missing = [i for i in reservation_ids if i not in ws.reservations]
                if missing or group_id:
                    for row in await conn.fetch(_ARCHIVED_RESERVATIONS, missing, group_id or None):
                        ws.add_reservation(codec.reservation_from(row["doc"]))

        await self._standby_read(run)

    def _snapshot_plans(self, conn: asyncpg.Connection) -> str:
        """snapshot()'s settings for its transaction, with DISCARD PLANS when the
        connection's plans are _REPLAN_EVERY_S old (or it is new to this store)."""
        pid = conn.get_server_pid()
        now = time.monotonic()
        due = self._read_replan_at.get(pid)
        if due is not None and now < due:
            return _SNAPSHOT_PLANS_LOCAL
        if len(self._read_replan_at) >= _READ_REPLAN_TRACKED_MAX:
            self._read_replan_at.clear()
        self._read_replan_at[pid] = now + _REPLAN_EVERY_S
        return f"{_SNAPSHOT_PLANS_LOCAL}; {_REPLAN}"

    async def list_entries(
        self, account_id: str, asset: str, before_entry_id: int | None, limit: int
    ) -> list[Entry] | None:
        async def run(conn: asyncpg.Connection) -> list[Entry] | None:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                if (
                    await conn.fetchval("SELECT 1 FROM accounts WHERE account_id = $1", account_id)
                    is None
                ):
                    return None
                rows = await conn.fetch(
                    "SELECT entry_id, transaction_id, account_id, asset, amount, movement, bucket,"
                    " reservation_id, lot_id, created_at FROM entries"
                    " WHERE account_id = $1 AND ($2 = '' OR asset = $2) AND ($3::int8 IS NULL OR entry_id < $3)"
                    " ORDER BY entry_id DESC LIMIT $4",
                    account_id,
                    asset,
                    before_entry_id,
                    limit,
                )
            return [_entry(r) for r in rows]

        return await self._standby_read(run)

    async def breakage(
        self, ws: WorkingSet, pair: PairKey, start: datetime, end: datetime
    ) -> list[BreakageLine] | None:
        async def run(conn: asyncpg.Connection) -> list[BreakageLine] | None:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                if (
                    await conn.fetchval("SELECT 1 FROM accounts WHERE account_id = $1", pair[0])
                    is None
                ):
                    return None
                await conn.execute(_READ_PLANS_LOCAL)
                await PgBatch(conn).load(ws, [], set(), {pair}, {pair[0]}, set())
                rows = await conn.fetch(_BREAKAGE, pair[0], pair[1], start, end)
            return [BreakageLine(r[0], r[1], r[2], r[3]) for r in rows]

        return await self._standby_read(run)

    async def list_schedules(
        self, account_id: str, after: tuple[datetime, str] | None, limit: int
    ) -> list[Schedule] | None:
        after_at, after_id = after if after is not None else (None, None)

        async def run(conn: asyncpg.Connection) -> list[Schedule] | None:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                if (
                    await conn.fetchval("SELECT 1 FROM accounts WHERE account_id = $1", account_id)
                    is None
                ):
                    return None
                rows = await conn.fetch(_LIST_SCHEDULES, account_id, after_at, after_id, limit)
            return [codec.schedule_from(r[0]) for r in rows]

        return await self._standby_read(run)

    async def list_reservations(
        self,
        account_id: str,
        asset: str,
        state: ReservationState | None,
        after: tuple[datetime, str] | None,
        limit: int,
        now: datetime,
    ) -> list[Reservation] | None:
        after_at, after_id = after if after is not None else (None, None)
        sql, with_now = _LIST_RESERVATIONS[state]
        args: tuple[Any, ...] = (account_id, asset, after_at, after_id, limit)
        if with_now:
            args = (*args, now)

        async def run(conn: asyncpg.Connection) -> list[Reservation] | None:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                if (
                    await conn.fetchval("SELECT 1 FROM accounts WHERE account_id = $1", account_id)
                    is None
                ):
                    return None
                rows = await conn.fetch(sql, *args)
            return [codec.reservation_from(r[0]) for r in rows]

        return await self._read(run)

    async def journal_page(
        self, after: tuple[int, int], filters: JournalFilter, limit: int
    ) -> tuple[list[JournalRow], int, dict[tuple[int, str], list[AlertEvent]]]:
        """Journal rows after `after` below the horizon, in stream order, the
        horizon (ledger.storage.journal), and the alert events of the rows'
        transactions. A full page ends with its last transaction whole.
        Errors: StorageUnavailable."""
        args = journal.filter_args(*filters)

        async def run(
            conn: asyncpg.Connection,
        ) -> tuple[list[JournalRow], int, dict[tuple[int, str], list[AlertEvent]]]:
            rows, horizon = await journal.page(conn, after, args, limit)
            if len(rows) == limit:
                rows += await journal.rest(conn, rows[-1], args)
            keys = sorted({(r.xid, r.entry.transaction_id) for r in rows})
            return rows, horizon, await alert_sql.events(conn, keys, args)

        return await self._stream_read(run)

    async def journal_snapshot(self) -> tuple[int, int, list[int]]:
        """(xmin, xmax, xids in progress) of a snapshot taken now."""
        row = await self._read(lambda conn: conn.fetchrow(journal.SNAPSHOT))
        return int(row[0]), int(row[1]), [int(x) for x in row[2]]

    async def journal_horizon(self) -> int:
        """The oldest transaction id still running (the stream reads below it)."""
        return int(await self._stream_read(lambda conn: conn.fetchval(journal.HORIZON)))

    async def balance_as_of(
        self, account_id: str, asset: str, position: tuple[int, int] | None, at: datetime | None
    ) -> tuple[bool, JournalRow | None, datetime | None, list[JournalRow]]:
        """(whether the account exists, the pair's last row at or before the
        position or instant, the instant of the pair's next batch after `at`,
        that batch's catch-up rows due by `at`), from one snapshot."""

        async def run(
            conn: asyncpg.Connection,
        ) -> tuple[bool, JournalRow | None, datetime | None, list[JournalRow]]:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                exists = await conn.fetchval(
                    "SELECT 1 FROM accounts WHERE account_id = $1", account_id
                )
                if exists is None:
                    return False, None, None, []
                if position is not None:
                    return (
                        True,
                        await journal.at_position(conn, account_id, asset, position),
                        None,
                        [],
                    )
                if at is None:
                    raise ValueError("balance_as_of needs a position or an instant")
                last, following, due = await journal.at_time(conn, account_id, asset, at)
                return True, last, following, due

        return await self._standby_read(run)

    async def statement(
        self,
        account_id: str,
        asset: str,
        start: datetime,
        end: datetime,
        after: tuple[datetime, int] | None,
        limit: int,
    ) -> tuple[list[tuple[str, str, int, int]], list[tuple[datetime, JournalRow]]]:
        """The pair's rows that took effect in (start, end]: totals per (movement,
        bucket) and one page after `after` (took effect, entry id)."""
        return await self._standby_read(
            lambda conn: journal.statement(conn, account_id, asset, start, end, after, limit)
        )

    async def set_alert(
        self,
        account_id: str,
        asset: str,
        threshold: int,
        recovery: int,
        percent: bool,
        now: datetime,
        top_up: tuple[int, int] = (0, 0),
    ) -> BalanceAlert | None:
        return await self._read(
            lambda conn: alert_sql.set_alert(
                conn, account_id, asset, threshold, recovery, percent, now, top_up
            )
        )

    async def list_alerts(self, account_id: str) -> list[BalanceAlert] | None:
        return await self._standby_read(lambda conn: alert_sql.list_alerts(conn, account_id))

    async def delete_alert(self, account_id: str, asset: str) -> bool:
        return await self._read(lambda conn: alert_sql.delete_alert(conn, account_id, asset))

    async def due(self, now: datetime, limit: int) -> tuple[list[str], list[tuple[str, str]]]:
        async def run(conn: asyncpg.Connection) -> tuple[list[str], list[tuple[str, str]]]:
            res = await conn.fetch(
                "SELECT reservation_id FROM reservations WHERE state = 'open' AND expires_at <= $1"
                " ORDER BY expires_at LIMIT $2",
                now,
                limit,
            )
            lots = await conn.fetch(
                "SELECT DISTINCT account_id, asset FROM (SELECT account_id, asset FROM lots"
                " WHERE remaining > 0 AND expires_at IS NOT NULL AND expires_at <= $1"
                " ORDER BY expires_at LIMIT $2) AS due_lots",
                now,
                limit,
            )
            # Pairs whose grant schedules have a period due (catch_up issues it).
            scheduled = await conn.fetch(
                "SELECT DISTINCT account_id, asset FROM (SELECT account_id, asset"
                " FROM grant_schedules WHERE state = 'active' AND next_start <= $1"
                " ORDER BY next_start LIMIT $2) AS due_schedules",
                now,
                limit,
            )
            pairs = {(r[0], r[1]) for r in lots} | {(r[0], r[1]) for r in scheduled}
            return [str(r[0]) for r in res], sorted(pairs)

        return await self._read(run)

    async def reservation_stats(self, now: datetime) -> tuple[int, float]:
        row = await self._read(
            lambda conn: conn.fetchrow(
                "SELECT count(*) AS open, coalesce(extract(epoch FROM $1::timestamptz"
                " - min(expires_at) FILTER (WHERE expires_at <= $1)), 0)::float8 AS overdue_s"
                " FROM reservations WHERE state = 'open'",
                now,
            )
        )
        return int(row["open"]), max(0.0, float(row["overdue_s"]))

    async def maintain_idempotency(
        self, now: datetime, until: datetime, drop: bool = True
    ) -> tuple[int, int]:
        """Create the idempotency partitions up to `until`; drop those expired by `now`.

        Returns (created, dropped); (0, 0) when another process is doing it.
        """
        if not self._may_maintain:
            # `ledger maintain` (the owner) makes them: only see how far they reach.
            await self.refresh_idempotency_coverage(now)
            return 0, 0
        async with self._connection() as conn:
            result = await _guard(idem.maintain(conn, now, until, self._idem_partition, drop))
        if result.covered_until is not None:
            self._idem_covered = (now, result.covered_until)
        return result.created, result.dropped

    async def _cover_idempotency(self, now: datetime, expires_at: datetime) -> None:
        """Called by a batch before it inserts records: the partitions are normally
        made far ahead by the sweeper; this covers a process that has not run it
        yet, or a clock that jumped. Another process holding the maintenance lock
        makes the batch retry."""
        covered = self._idem_covered
        if covered is not None and covered[0] <= expires_at < covered[1]:
            return
        margin = 2 * self._idem_partition
        if not self._may_maintain:
            # No DDL as the serving role: perhaps `ledger maintain` ran since the last look.
            until = await self.refresh_idempotency_coverage(now)
            if expires_at + margin <= until:
                return
            raise errors.DatabaseUnavailable(
                _NO_PARTITION, {"missing_until": _record_ts(expires_at + margin)}
            )
        async with self._connection() as conn:
            result = await _guard(
                idem.maintain(conn, now, expires_at + margin, self._idem_partition, drop=False)
            )
        if result.skipped or result.covered_until is None:
            raise SerializationConflict("idempotency partitions are being maintained")
        self._idem_covered = (now, result.covered_until)

    async def check_partition_rights(self) -> bool:
        """Whether this role may create and drop the idempotency partitions (it owns
        the table, or may act as its owner); checked once at start. When it may
        not, maintain_idempotency only reads how far the partitions reach and a
        batch whose key has no partition answers DatabaseUnavailable."""
        async with self._connection() as conn:
            self._may_maintain = await _guard(idem.may_maintain(conn))
        return self._may_maintain

    async def refresh_idempotency_coverage(self, now: datetime) -> datetime:
        """How far (from `now`, without a gap) the idempotency partitions reach;
        read from the catalog, no DDL."""
        async with self._connection() as conn:
            until = await _guard(idem.covered_until(conn, now))
        self._idem_covered = (now, until)
        return until

    def maintains_idempotency(self) -> bool:
        return self._may_maintain

    def idempotency_ready_until(self) -> datetime | None:
        """The end of the partitions as last seen (None before the first look)."""
        return None if self._idem_covered is None else self._idem_covered[1]

    async def archive_reservations(
        self, expired_before: datetime, now: datetime, limit: int
    ) -> int:
        """Move closed reservations whose expires_at is before `expired_before` to the
        archive, at most `limit` in one short transaction. Returns how many moved.

        Errors: SerializationConflict (run it again), StorageUnavailable.
        """

        async def run(conn: asyncpg.Connection) -> int:
            async with conn.transaction(isolation="serializable"):
                moved: int = await conn.fetchval(_ARCHIVE_RESERVATIONS, expired_before, limit, now)
            return moved

        return await self._read(run)

    async def ping(self) -> None:
        """Check the database; failures mark it unreachable until a ping succeeds."""
        try:
            async with self._connection(fail_fast=False) as conn:
                await _guard(conn.fetchval("SELECT 1", timeout=2.0))
        except BaseException:
            self.reachable = False
            raise
        self.reachable = True


def json_codec_init() -> Callable[[asyncpg.Connection], Awaitable[None]]:
    """Pool `init`: jsonb to and from Python values, in jsonb's binary format
    (a version byte, then the text) and with orjson: the batch's read and save
    move every row as jsonb, and the stdlib's json was a visible share of a batch."""

    async def init(conn: asyncpg.Connection) -> None:
        await conn.set_type_codec(
            "jsonb",
            encoder=_jsonb_encode,
            decoder=_jsonb_decode,
            schema="pg_catalog",
            format="binary",
        )

    return init


_JSONB_VERSION = b"\x01"


def _jsonb_encode(value: Any) -> bytes:
    """str and bytes are JSON text already; anything else is serialized."""
    if isinstance(value, str):
        return _JSONB_VERSION + value.encode()
    if isinstance(value, bytes):
        return _JSONB_VERSION + value
    return _JSONB_VERSION + orjson.dumps(value)


def _jsonb_decode(data: bytes) -> Any:
    if data[:1] != _JSONB_VERSION:
        raise ValueError(f"unknown jsonb binary format version {data[:1]!r}")
    return orjson.loads(memoryview(data)[1:])
