"""GetBalance as of an instant or a stream position (issue 17; docs/design.md,
"Balances as of any instant").

Each customer journal row keeps the balance of its account x asset right
after it, so the answer is one row found through an index, whatever the
account's history:

- As of a position: the pair's last row at or before it, as written (what a
  consumer replaying the stream up to that position has).
- As of an instant T: what rules.catch_up showed at T. The pair's last row
  written at or before T, plus the deadlines (holds, lots) that had come by T
  but were written later: every batch catches a pair up before anything else
  touches it, so those are catch-up rows of the pair's first batch after T,
  each stamped with the deadline it applied (effective_at). Their deltas are
  added to the row's balance. When nothing was written on the pair since T,
  the pair's rows now are its rows at T, and catch_up at T is applied to them
  exactly as a read at T did.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from ledger.domain import rules
from ledger.domain.model import Balance, Bucket, JournalRow, Movement
from ledger.domain.workingset import saturating
from ledger.service.ports import SerializationConflict, Store

# A batch that commits on the pair between the two reads of the "nothing since"
# case makes it read again; past this many, the answer comes from the journal.
_ATTEMPTS_MAX = 3


def journal_fields(b: Balance) -> Balance:
    """The amounts a journal row keeps of its pair (what as-of answers carry): a
    pair's version, floor, debt and caps are its state now, not history."""
    return Balance(
        b.account_id, b.asset, b.available, b.reserved, b.granted, b.settled, b.refunded, b.expired
    )


def with_due(base: Balance, due: list[JournalRow]) -> Balance:
    """`base` plus the effect of catch-up rows (expiries, and a schedule's periods:
    their grants and debt repayments), as WorkingSet._apply counts them."""
    out = base.copy()
    for r in due:
        e = r.entry
        if e.bucket is Bucket.AVAILABLE:
            out.available += e.amount
        elif e.bucket is Bucket.HELD:
            out.reserved += e.amount
        if e.movement is Movement.LOT_EXPIRY:
            out.expired = saturating(out.expired - e.amount)
        elif e.movement is Movement.GRANT:
            out.granted = saturating(out.granted + e.amount)
    return out


async def balance_as_of(
    store: Store,
    account_id: str,
    asset: str,
    position: tuple[int, int] | None,
    at: datetime | None,
    refund_grace: timedelta,
) -> Balance | None:
    """The balance as of `position` or `at`; None when the account does not exist.
    Errors: StorageUnavailable, SerializationConflict."""
    zero = Balance(account_id, asset)
    for _ in range(_ATTEMPTS_MAX):
        exists, last, following, due = await store.balance_as_of(account_id, asset, position, at)
        if not exists:
            return None
        base = last.after if last is not None and last.after is not None else zero
        if position is not None or at is None:
            return journal_fields(base)
        if following is not None:
            return journal_fields(with_due(base, due))
        # Nothing written on the pair since `at`: its rows now are its rows then.
        ws = rules.WorkingSet(now=at, refund_grace=refund_grace)
        pair = (account_id, asset)
        await store.snapshot(ws, pairs={pair}, whole_pairs={pair})
        if journal_fields(ws.balances.get(pair, zero)) != journal_fields(base):
            continue  # a batch committed in between: look again
        rules.catch_up(ws, account_id, asset)
        return journal_fields(ws.balance(account_id, asset))
    raise SerializationConflict("the pair kept changing while it was read as of an instant")
