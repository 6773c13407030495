"""How operator commands print: aligned tables for people, JSON for scripts."""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TextIO

from creditledger_client import Account, Balance, Entry, Lot, Reservation

BALANCE_COLUMNS = ("ASSET", "AVAILABLE", "RESERVED", "GRANTED", "SETTLED", "REFUNDED", "EXPIRED")


def plain(value: Any) -> Any:
    """A JSON-ready copy of a client value: dataclasses as objects, enums by name.

    Amounts stay JSON integers: this is the CLI's own format, read by scripts
    with a JSON parser, not proto JSON (where int64 would be strings).
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def write_json(out: TextIO, value: Any) -> None:
    """One JSON document on one line followed by a newline."""
    out.write(json.dumps(plain(value), sort_keys=True) + "\n")


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    """Left-aligned columns separated by two spaces; numbers right-aligned."""
    cells = [[str(c) for c in header]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    numeric = [bool(rows) and all(isinstance(r[i], int) for r in rows) for i in range(len(header))]
    lines = []
    for r in cells:
        parts = [
            c.rjust(w) if numeric[i] else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def fields(pairs: Iterable[tuple[str, object]]) -> str:
    """A key/value block: one `key  value` line per pair."""
    items = [(k, _cell(v)) for k, v in pairs]
    width = max((len(k) for k, _ in items), default=0)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in items)


def _cell(value: object) -> str:
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if value is None or value == "":
        return "-"
    if isinstance(value, Mapping):
        return ",".join(f"{k}={v}" for k, v in sorted(value.items())) or "-"
    return str(value)


def balance_rows(balances: Iterable[Balance]) -> list[list[object]]:
    """Rows for BALANCE_COLUMNS."""
    return [
        [b.asset, b.available, b.reserved, b.granted, b.settled, b.refunded, b.expired]
        for b in balances
    ]


def balances_table(account_id: str, balances: Sequence[Balance]) -> str:
    """The balances of one account, or a line saying it has none."""
    if not balances:
        return f"{account_id} has no balances yet (grant credits with `ledger grant`)"
    return table(balance_rows(balances), BALANCE_COLUMNS)


def account_text(account: Account) -> str:
    """An account's fields followed by its balances."""
    head = fields(
        [
            ("account", account.account_id),
            ("created", account.created_at),
            ("metadata", account.metadata),
        ]
    )
    return head + "\n\n" + balances_table(account.account_id, account.balances)


def reservation_text(r: Reservation) -> str:
    """A reservation's fields."""
    pairs: list[tuple[str, object]] = [
        ("reservation", r.reservation_id),
        ("state", r.state),
        ("account", r.account_id),
        ("asset", r.asset),
        ("amount", r.amount),
        ("settled", r.settled),
        ("released", r.released),
        ("refunded", r.refunded),
        ("remaining", r.remaining),
        ("created", r.created_at),
        ("expires", r.expires_at),
        ("metadata", r.metadata),
    ]
    if r.group_id:
        pairs += [("group", r.group_id), ("leg", r.leg_key)]
    return fields(pairs)


def lots_table(lots: Sequence[Lot]) -> str:
    """Lots in spending order."""
    rows = [
        [lot.lot_id, lot.source, lot.priority, lot.amount, lot.remaining, lot.expires_at]
        for lot in lots
    ]
    return table(rows, ("LOT", "SOURCE", "PRIORITY", "AMOUNT", "REMAINING", "EXPIRES"))


def entries_table(entries: Sequence[Entry]) -> str:
    """Journal lines, as they came (newest first)."""
    rows = [
        [
            e.created_at,
            e.transaction_id,
            e.account_id,
            e.asset,
            e.movement,
            e.bucket,
            e.amount,
            e.reservation_id,
        ]
        for e in entries
    ]
    header = ("CREATED", "TRANSACTION", "ACCOUNT", "ASSET", "MOVEMENT", "BUCKET", "AMOUNT")
    return table(rows, (*header, "RESERVATION"))
