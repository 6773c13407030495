"""The journal as the change stream and the as-of reads see it (issue 17).

The stream's order is (xid, entry_id): the id of the transaction that wrote a
row, then the row's id. A page is read in one statement, so in one snapshot:
the horizon, the oldest transaction still running in that snapshot
(pg_snapshot_xmin of pg_current_snapshot(), which is the statement's own
snapshot), and the rows below it. Every transaction that can still commit
has an xid at or above the horizon, so a row below it is either visible in
the snapshot or never will be: a reader that resumes after the last position
it read skips nothing (docs/design.md, "The change stream"). One statement
rather than a REPEATABLE READ transaction of two: a stream reads a page at
every horizon change, and BEGIN and COMMIT were two of its four round trips.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from ledger.domain.model import Balance, Bucket, Entry, JournalRow, Movement, built

# Ids as text: PostgreSQL writes them out faster than Python turns UUIDs into str
# (the stream converts every row it sends).
_COLS = (
    "xid::text AS xid, entry_id, transaction_id::text AS transaction_id, account_id, asset,"
    " amount, movement, bucket, reservation_id::text AS reservation_id,"
    " lot_id::text AS lot_id, created_at, caller, idempotency_key, effective_at,"
    " available_after, reserved_after, granted_after, settled_after, refunded_after,"
    " expired_after"
)

# The oldest transaction still running in the snapshot of the statement that reads it.
HORIZON_OF_SNAPSHOT = "pg_snapshot_xmin(pg_current_snapshot())"
HORIZON = f"SELECT {HORIZON_OF_SNAPSHOT}::text"
SNAPSHOT = (
    "SELECT pg_snapshot_xmin(s)::text, pg_snapshot_xmax(s)::text,"
    " array(SELECT x::text FROM pg_snapshot_xip(s) AS x) FROM pg_current_snapshot() AS s"
)

# What a stream may see: customer rows (system accounts have no balance and no
# tenant), within its filters and the caller's scope ($4..$7; '' and NULL = any).
_FILTER = (
    " AND bucket <> 'system' AND ($4 = '' OR account_id = $4)"
    " AND ($5 = '' OR starts_with(account_id, $5)) AND ($6 = '' OR asset = $6)"
    " AND ($7::text[] IS NULL OR EXISTS (SELECT 1 FROM unnest($7::text[]) AS s(p)"
    " WHERE starts_with(account_id, s.p)))"
)

# The horizon and the rows below it, from one snapshot: one row with NULL
# columns when there are none (the LEFT JOIN), else the horizon on every row.
# $3 is the page's size, so that the filters keep their numbers ($4..$7).
PAGE = (
    f"WITH h AS MATERIALIZED (SELECT {HORIZON_OF_SNAPSHOT} AS horizon)"
    f" SELECT h.horizon::text AS horizon, p.* FROM h LEFT JOIN LATERAL (SELECT {_COLS},"
    " entries.xid AS sort_xid FROM entries"
    " WHERE (xid, entry_id) > ($1::text::xid8, $2::int8) AND xid < h.horizon"
    f"{_FILTER} ORDER BY entries.xid, entry_id LIMIT $3) AS p ON true"
    " ORDER BY p.sort_xid, p.entry_id"
)

# The rest of one transaction that a full page cut: same xid, same transaction id.
REST = (
    f"SELECT {_COLS} FROM entries"
    " WHERE xid = $1::text::xid8 AND entry_id > $2::int8 AND transaction_id = $3::uuid"
    f"{_FILTER} ORDER BY entry_id"
)


_MOVEMENTS = {m.value: m for m in Movement}
_BUCKETS = {b.value: b for b in Bucket}


def row(r: asyncpg.Record) -> JournalRow:
    """Per row of every page a stream reads: dict lookups, not Enum calls, and
    the frozen types built without their __init__ (model.built)."""
    account_id, asset = r["account_id"], r["asset"]
    entry = built(
        Entry,
        entry_id=r["entry_id"],
        transaction_id=r["transaction_id"],
        account_id=account_id,
        asset=asset,
        amount=r["amount"],
        movement=_MOVEMENTS[r["movement"]],
        bucket=_BUCKETS[r["bucket"]],
        reservation_id=r["reservation_id"] or "",
        lot_id=r["lot_id"] or "",
        created_at=r["created_at"],
    )
    available = r["available_after"]
    return built(
        JournalRow,
        xid=int(r["xid"]),
        entry=entry,
        caller=r["caller"],
        idempotency_key=r["idempotency_key"],
        effective_at=r["effective_at"],
        after=None
        if available is None
        else Balance(
            account_id,
            asset,
            available,
            r["reserved_after"],
            r["granted_after"],
            r["settled_after"],
            r["refunded_after"],
            r["expired_after"],
        ),
    )


def filter_args(
    account_id: str, account_prefix: str, asset: str, scope: tuple[str, ...] | None
) -> tuple[Any, ...]:
    return (account_id, account_prefix, asset, list(scope) if scope is not None else None)


async def page(
    conn: asyncpg.Connection,
    after_position: tuple[int, int],
    filters: tuple[Any, ...],
    limit: int,
) -> tuple[list[JournalRow], int]:
    """Rows after `after_position` below the horizon, in stream order (at most
    `limit`), and the horizon, from one snapshot (one statement)."""
    rows = await conn.fetch(PAGE, str(after_position[0]), after_position[1], limit, *filters)
    horizon = int(rows[0]["horizon"])
    if rows[0]["entry_id"] is None:
        return [], horizon
    return [row(r) for r in rows], horizon


async def rest(
    conn: asyncpg.Connection, last: JournalRow, filters: tuple[Any, ...]
) -> list[JournalRow]:
    rows = await conn.fetch(
        REST, str(last.xid), last.entry.entry_id, last.entry.transaction_id, *filters
    )
    return [row(r) for r in rows]


# ---------------------------------------------------------------- as of

# The pair's balance after its last row at or before a position.
AT_POSITION = (
    f"SELECT {_COLS} FROM entries WHERE account_id = $1 AND asset = $2 AND bucket <> 'system'"
    " AND (xid, entry_id) <= ($3::text::xid8, $4::int8)"
    " ORDER BY entries.xid DESC, entry_id DESC LIMIT 1"
)

# The pair's last row written at or before an instant.
AT_TIME = (
    f"SELECT {_COLS} FROM entries WHERE account_id = $1 AND asset = $2 AND bucket <> 'system'"
    " AND created_at <= $3 ORDER BY created_at DESC, entry_id DESC LIMIT 1"
)

# The pair's first batch after an instant: its instant (every row of a batch has it).
NEXT_BATCH = (
    "SELECT created_at FROM entries WHERE account_id = $1 AND asset = $2 AND bucket <> 'system'"
    " AND created_at > $3 ORDER BY created_at, entry_id LIMIT 1"
)

# That batch's catch-up rows whose deadline had come by the instant: what
# rules.catch_up would have applied had anyone looked at the pair then.
DUE_BY = (
    f"SELECT {_COLS} FROM entries WHERE account_id = $1 AND asset = $2 AND bucket <> 'system'"
    " AND created_at = $3 AND effective_at <= $4 ORDER BY created_at, entry_id"
)


async def at_position(
    conn: asyncpg.Connection, account_id: str, asset: str, position: tuple[int, int]
) -> JournalRow | None:
    r = await conn.fetchrow(AT_POSITION, account_id, asset, str(position[0]), position[1])
    return None if r is None else row(r)


async def at_time(
    conn: asyncpg.Connection, account_id: str, asset: str, at: datetime
) -> tuple[JournalRow | None, datetime | None, list[JournalRow]]:
    """The pair's last row at or before `at`, the instant of its next batch (None:
    nothing was written since), and that batch's catch-up rows due by `at`."""
    last = await conn.fetchrow(AT_TIME, account_id, asset, at)
    following = await conn.fetchval(NEXT_BATCH, account_id, asset, at)
    due: list[JournalRow] = []
    if following is not None:
        due = [row(r) for r in await conn.fetch(DUE_BY, account_id, asset, following, at)]
    return (None if last is None else row(last)), following, due


# ---------------------------------------------------------------- statements

# A statement's rows: the pair's customer rows that took effect in (from, to]
# (effective_at for what a deadline did, else when written). They were all
# written after `from` and at the latest by the pair's first batch after `to`
# (which writes the deadlines due by `to` first): a range of entries_pair_time.
_WINDOW = """
WITH upper AS (
    SELECT coalesce((SELECT created_at FROM entries
        WHERE account_id = $1 AND asset = $2 AND bucket <> 'system' AND created_at > $4
        ORDER BY created_at, entry_id LIMIT 1), $4::timestamptz) AS until
), win AS (
    SELECT e.*, coalesce(e.effective_at, e.created_at) AS took_effect FROM entries e, upper
    WHERE e.account_id = $1 AND e.asset = $2 AND e.bucket <> 'system'
      AND e.created_at > $3 AND e.created_at <= upper.until
      AND coalesce(e.effective_at, e.created_at) > $3
      AND coalesce(e.effective_at, e.created_at) <= $4
)
"""

STATEMENT_TOTALS = (
    _WINDOW + "SELECT movement, bucket, sum(amount)::int8 AS total, count(*) AS n"
    " FROM win GROUP BY movement, bucket"
)

STATEMENT_PAGE = (
    _WINDOW + f"SELECT took_effect, {_COLS} FROM win"
    " WHERE ($5::timestamptz IS NULL OR (took_effect, entry_id) > ($5, $6::int8))"
    " ORDER BY took_effect, entry_id LIMIT $7"
)


async def statement(
    conn: asyncpg.Connection,
    account_id: str,
    asset: str,
    start: datetime,
    end: datetime,
    after: tuple[datetime, int] | None,
    limit: int,
) -> tuple[list[tuple[str, str, int, int]], list[tuple[datetime, JournalRow]]]:
    """(movement, bucket, sum, count) per kind of row, and a page of rows, in one snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        totals = await conn.fetch(STATEMENT_TOTALS, account_id, asset, start, end)
        page = await conn.fetch(
            STATEMENT_PAGE,
            account_id,
            asset,
            start,
            end,
            after[0] if after else None,
            after[1] if after else 0,
            limit,
        )
    return (
        [(r["movement"], r["bucket"], r["total"], r["n"]) for r in totals],
        [(r["took_effect"], row(r)) for r in page],
    )
