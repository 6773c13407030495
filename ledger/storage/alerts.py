"""Balance alerts' own statements (the writer's updates are in the batch's save)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from ledger.domain import alerts, codec, limits
from ledger.domain.errors import AlertLimitExceeded
from ledger.domain.model import AlertEvent, AlertEventKind, AlertState, BalanceAlert

_COLS = "account_id, asset, threshold, recovery, percent, basis, state, created_at"
_READ_COLS = (
    _COLS + ", top_up_target, top_up_cap_month, top_up_pending, top_up_month,"
    " top_up_requested_month"
)

# The amount of the pair's last Grant (the basis of percentages), newest first
# through entries_pair_position.
_LAST_GRANT = (
    "SELECT amount FROM entries WHERE account_id = $1 AND asset = $2 AND bucket = 'available'"
    " AND movement = 'grant' ORDER BY xid DESC, entry_id DESC LIMIT 1"
)


async def set_alert(
    conn: asyncpg.Connection,
    account_id: str,
    asset: str,
    threshold: int,
    recovery: int,
    percent: bool,
    now: datetime,
    top_up: tuple[int, int] = (0, 0),
) -> BalanceAlert | None:
    """Create or replace, starting where the balance is (no event), with the top-up
    rule `top_up` (target, monthly cap); a replaced alert keeps its pending top-up
    requests and the month's total (a Grant may still settle them). None: no account.
    One SERIALIZABLE transaction: a batch changing the balance meanwhile conflicts
    with it (it reads the alert, this reads the balance), and one of them retries.
    Errors: AlertLimitExceeded."""
    async with conn.transaction(isolation="serializable"):
        if await conn.fetchval("SELECT 1 FROM accounts WHERE account_id = $1", account_id) is None:
            return None
        count = await conn.fetchval(
            "SELECT count(*) FROM balance_alerts WHERE account_id = $1 AND asset <> $2",
            account_id,
            asset,
        )
        if count >= limits.ALERTS_PER_ACCOUNT_MAX:
            raise AlertLimitExceeded(
                f"{account_id} has {count} balance alerts, the most one account may have"
                f" (ALERTS_PER_ACCOUNT_MAX {limits.ALERTS_PER_ACCOUNT_MAX}); delete one first",
                {"limit": str(limits.ALERTS_PER_ACCOUNT_MAX)},
            )
        available = await conn.fetchval(
            "SELECT available FROM balances WHERE account_id = $1 AND asset = $2",
            account_id,
            asset,
        )
        basis = await conn.fetchval(_LAST_GRANT, account_id, asset) if percent else 0
        alert = BalanceAlert(
            account_id,
            asset,
            threshold,
            recovery,
            percent,
            basis or 0,
            AlertState.ABOVE,
            now,
        )
        alert.state = alerts.initial_state(alert, available or 0)
        row = await conn.fetchrow(
            f"INSERT INTO balance_alerts ({_COLS}, top_up_target, top_up_cap_month)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
            " ON CONFLICT (account_id, asset) DO UPDATE SET threshold = EXCLUDED.threshold,"
            " recovery = EXCLUDED.recovery, percent = EXCLUDED.percent, basis = EXCLUDED.basis,"
            " state = EXCLUDED.state, created_at = EXCLUDED.created_at,"
            " top_up_target = EXCLUDED.top_up_target,"
            f" top_up_cap_month = EXCLUDED.top_up_cap_month RETURNING {_READ_COLS}",
            account_id,
            asset,
            threshold,
            recovery,
            percent,
            alert.basis,
            alert.state.value,
            now,
            top_up[0],
            top_up[1],
        )
    return codec.alert_from(dict(row))


async def list_alerts(conn: asyncpg.Connection, account_id: str) -> list[BalanceAlert] | None:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        if await conn.fetchval("SELECT 1 FROM accounts WHERE account_id = $1", account_id) is None:
            return None
        rows = await conn.fetch(
            f"SELECT {_READ_COLS} FROM balance_alerts WHERE account_id = $1 ORDER BY asset"
            " LIMIT $2",
            account_id,
            limits.ALERTS_PER_ACCOUNT_MAX,
        )
    return [codec.alert_from(dict(r)) for r in rows]


async def delete_alert(conn: asyncpg.Connection, account_id: str, asset: str) -> bool:
    async with conn.transaction(isolation="serializable"):
        status = await conn.execute(
            "DELETE FROM balance_alerts WHERE account_id = $1 AND asset = $2", account_id, asset
        )
    return bool(status == "DELETE 1")


# The events of the transactions of a stream page, within its filters ($3..$6).
EVENTS = (
    "SELECT xid::text AS xid, transaction_id, account_id, asset, kind, available, threshold,"
    " recovery, request_id, amount FROM alert_events"
    " WHERE xid BETWEEN $1::text::xid8 AND $2::text::xid8"
    " AND ($3 = '' OR account_id = $3) AND ($4 = '' OR starts_with(account_id, $4))"
    " AND ($5 = '' OR asset = $5)"
    " AND ($6::text[] IS NULL OR EXISTS (SELECT 1 FROM unnest($6::text[]) AS s(p)"
    " WHERE starts_with(account_id, s.p)))"
    " ORDER BY event_id"
)


async def events(
    conn: asyncpg.Connection, keys: list[tuple[int, str]], filters: tuple[Any, ...]
) -> dict[tuple[int, str], list[AlertEvent]]:
    """The events of the transactions `keys` ((xid, transaction id), in stream
    order) wrote, as the filters let through. Read by the keys' xid range (an
    index range, no array of keys to send; few rows: events are rare), kept
    for the keys only."""
    if not keys:
        return {}
    wanted = set(keys)
    rows = await conn.fetch(EVENTS, str(keys[0][0]), str(keys[-1][0]), *filters)
    out: dict[tuple[int, str], list[AlertEvent]] = {}
    for r in rows:
        tx = str(r["transaction_id"])
        key = (int(r["xid"]), tx)
        if key not in wanted:
            continue
        out.setdefault(key, []).append(
            AlertEvent(
                tx,
                r["account_id"],
                r["asset"],
                AlertEventKind(r["kind"]),
                r["available"],
                r["threshold"],
                r["recovery"],
                str(r["request_id"]) if r["request_id"] is not None else "",
                r["amount"] or 0,
            )
        )
    return out
