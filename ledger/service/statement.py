"""GetStatement: one account x asset over (from, to] (issue 17; docs/design.md,
"Balances as of any instant", "Statements").

Opening and closing balances are GetBalance as_of_time at `from` and `to`. The
period's entries are the pair's rows that took effect in (from, to]: a
deadline's row (an expiry) at its deadline, any other when written. Because an
as-of balance counts exactly the rows that took effect by its instant, opening
plus the period's rows is the closing balance. The one case where that needs
help: a deadline in the period that nothing has written down yet (no batch on
the pair since, the sweeper not yet round). The statement then asks the writer
to write it (the sweeper's own command, ExpireDue, idempotent) and reads again,
so every line of a statement is a journal row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ledger.domain import commands as c
from ledger.domain import errors
from ledger.domain.model import Balance, Entry, Movement
from ledger.domain.workingset import saturating
from ledger.service import asof
from ledger.service.ports import CommandSink, Store

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class MovementLine:
    movement: Movement
    amount: int = 0
    available_change: int = 0
    reserved_change: int = 0
    entry_count: int = 0


@dataclass
class Statement:
    opening: Balance
    movements: list[MovementLine]
    closing: Balance
    entries: list[Entry] = field(default_factory=list)
    # (took effect, entry id) of the page's last entry when there are more.
    next_cursor: tuple[datetime, int] | None = None
    next_token: str = ""


# Which side of a movement's rows is its amount: the bucket credits entered (+)
# or, for what leaves the account, minus the sum of every customer row.
_ENTERING = {
    Movement.GRANT: "available",
    Movement.RESERVE: "held",
    Movement.RELEASE: "available",
    Movement.REFUND: "available",
    Movement.RESERVATION_EXPIRY: "available",
    Movement.DEBT: "available",  # lent into available (debt_repayment leaves it)
}


def lines(totals: list[tuple[str, str, int, int]]) -> list[MovementLine]:
    by: dict[Movement, MovementLine] = {}
    for movement_name, bucket, total, count in totals:
        movement = Movement(movement_name)
        line = by.setdefault(movement, MovementLine(movement))
        line.entry_count += count
        if bucket == "available":
            line.available_change += total
        elif bucket == "held":
            line.reserved_change += total
        entering = _ENTERING.get(movement)
        if entering is None:
            line.amount -= total  # settle, lot expiry: credits leave the account
        elif entering == bucket:
            line.amount += total
    order = list(Movement)
    return sorted(by.values(), key=lambda m: order.index(m.movement))


def reconciles(opening: Balance, movements: list[MovementLine], closing: Balance) -> bool:
    """Opening plus the lines is the closing balance, field by field."""
    amount = {m.movement: m.amount for m in movements}
    want = (
        opening.available + sum(m.available_change for m in movements),
        opening.reserved + sum(m.reserved_change for m in movements),
        saturating(opening.granted + amount.get(Movement.GRANT, 0)),
        saturating(opening.settled + amount.get(Movement.SETTLE, 0)),
        saturating(opening.refunded + amount.get(Movement.REFUND, 0)),
        saturating(opening.expired + amount.get(Movement.LOT_EXPIRY, 0)),
    )
    have = (
        closing.available,
        closing.reserved,
        closing.granted,
        closing.settled,
        closing.refunded,
        closing.expired,
    )
    return want == have


async def statement(
    store: Store,
    writer: CommandSink,
    account_id: str,
    asset: str,
    start: datetime,
    end: datetime,
    after: tuple[datetime, int] | None,
    limit: int,
    refund_grace: timedelta,
) -> Statement | None:
    """None when the account does not exist. Errors: the store's; the writer's
    (UNAVAILABLE) when a deadline of the period must be written down first;
    InvariantViolation when the journal does not reconcile (verify would say why)."""
    for attempt in range(2):
        opening = await asof.balance_as_of(store, account_id, asset, None, start, refund_grace)
        closing = await asof.balance_as_of(store, account_id, asset, None, end, refund_grace)
        if opening is None or closing is None:
            return None
        totals, page = await store.statement(account_id, asset, start, end, after, limit + 1)
        movements = lines(totals)
        if reconciles(opening, movements, closing):
            out = Statement(opening, movements, closing, [r.entry for _, r in page[:limit]])
            if len(page) > limit:
                took_effect, last = page[limit - 1]
                out.next_cursor = (took_effect, last.entry.entry_id)
            return out
        if attempt == 0:
            # A deadline of the period not written down yet: write it, read again.
            await writer.submit(c.ExpireDue(lot_pairs=((account_id, asset),)))
    raise errors.InvariantViolation(
        f"statement of {account_id}/{asset} does not reconcile; run `ledger verify`"
    )


def cursor_parts(cursor: tuple[datetime, int]) -> tuple[int, int]:
    delta = cursor[0] - _EPOCH
    return (delta.days * 86_400_000_000 + delta.seconds * 1_000_000 + delta.microseconds, cursor[1])


def cursor_from(parts: tuple[int, int]) -> tuple[datetime, int]:
    return (_EPOCH + timedelta(microseconds=parts[0]), parts[1])
