"""Grant schedules in the one view of a pair at an instant (rules.catch_up).

A schedule's period n has exactly one lot, keyed (schedule_id, n): catch_up
issues every period whose start is at or before `ws.now` and after the
schedule's `next_period`, each as at its own start (created_at = the start,
expires_at = the period's end or the schedule's lot life), before any rule or
read looks at the pair. A period that has already ended by then is issued and
then written off by catch_up's lot expiry, visibly (a grant entry and a
lot_expiry entry), never skipped. At a period lot's expiry, its rollover (if
the schedule has one) moves the unused remainder of that lot only, up to the
cap, to a new lot of category `rollover` (movement `rollover`, through the
system account @rollover); the rest is written off as any lot's.

The writer persists what catch_up produced (the lots, the entries and the
schedule's `next_period`); the table's unique key (schedule_id, period,
category) and the schedule row every such batch updates make a second
issuance of a period impossible, whichever process or clock tried.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

from ledger.domain import errors
from ledger.domain.model import (
    ALLOWANCE,
    ROLLED,
    ROLLOVER,
    BreakageLine,
    Bucket,
    Lot,
    Movement,
    Rollover,
    Schedule,
    ScheduleState,
)
from ledger.domain.periods import Cadence, OutOfCalendar, Unit, longest_period_s
from ledger.domain.workingset import ISSUED, ScheduleBehind, Side, WorkingSet, available

ROLLED_SIDE = Side(ROLLED, Bucket.SYSTEM)


def cadence(s: Schedule) -> Cadence:
    return Cadence(Unit(s.unit), s.count, s.anchor, s.time_zone)


def next_start(s: Schedule) -> datetime:
    """When the schedule's next period starts; far in the future when it never will."""
    try:
        start = cadence(s).start(s.next_period)
    except OutOfCalendar:
        return datetime.max.replace(tzinfo=s.anchor.tzinfo)
    if s.ends_at is not None and start >= s.ends_at:
        return datetime.max.replace(tzinfo=s.anchor.tzinfo)
    return start


def issue_due(ws: WorkingSet, account_id: str, asset: str) -> list[Lot]:
    """Issue every due period of the pair's schedules, oldest first, as at its
    start. Raises ScheduleBehind when one has more due than `ws.periods_max`."""
    issued: list[Lot] = []
    for s in ws.schedules_of((account_id, asset)):
        if s.next_start > ws.now:
            continue  # nothing due: the common case costs one comparison
        cad = cadence(s)
        n = s.next_period
        count = 0
        while True:
            try:
                start = cad.start(n)
                end = cad.start(n + 1)
            except OutOfCalendar:
                break
            if start > ws.now or (s.ends_at is not None and start >= s.ends_at):
                break
            if ws.periods_max is not None and count >= ws.periods_max:
                if not ws.periods_partial:
                    raise ScheduleBehind({(account_id, asset)})
                ws.behind = True
                break
            issued.append(_issue(ws, s, n, start, end))
            n += 1
            count += 1
        if n != s.next_period:
            s.next_period = n
            s.next_start = next_start(s)
            ws.dirty_schedules.add(s.schedule_id)
    return issued


def _issue(ws: WorkingSet, s: Schedule, n: int, start: datetime, end: datetime) -> Lot:
    expires = end if s.lot_life_s is None else start + timedelta(seconds=s.lot_life_s)
    amount, _ = s.terms_for(n)
    lot = Lot(
        lot_id=ws.make_id(),
        account_id=s.account_id,
        asset=s.asset,
        amount=amount,
        remaining=amount,
        priority=s.priority,
        source=f"schedule:{s.schedule_id}",
        expires_at=expires,
        created_at=start,
        category=s.category,
        schedule_id=s.schedule_id,
        period=n,
    )
    ws.add_lot(lot)
    ws.dirty_lots.add(lot.lot_id)
    ws.effective_at = start  # the journal row takes effect at the period's start (as_of)
    tx = ws.make_id()
    ws.transfer(
        tx, s.asset, amount, ISSUED, available(s.account_id), Movement.GRANT, lot_id=lot.lot_id
    )
    # A pair in debt is paid back first, as by a Grant, at the period's start too.
    ws.repay_debt(tx, lot)
    ws.end_change()  # each period's issue is a change (a version) of its own
    return lot


def rollover_cap(r: Rollover | None, period_amount: int) -> int:
    """The most of one period's lot that may roll over (0 without a rollover)."""
    if r is None:
        return 0
    caps = []
    if r.cap_amount is not None:
        caps.append(r.cap_amount)
    if r.cap_percent is not None:
        caps.append(period_amount * r.cap_percent // 100)
    return min(caps) if caps else period_amount


def roll_over(ws: WorkingSet, lot: Lot) -> Lot | None:
    """At `lot`'s expiry: move what the cap allows of its remainder to a new
    rollover lot. Only a schedule's own allowance lot rolls over, never a
    purchased one, never a rollover lot. Returns the new lot (it may itself be
    due: catch_up then writes it off too)."""
    s = ws.schedules.get(lot.schedule_id) if lot.schedule_id else None
    if s is None or lot.category != ALLOWANCE or lot.period is None or lot.expires_at is None:
        return None
    if s.state is not ScheduleState.ACTIVE:
        return None  # a cancelled schedule's lots expire whole (docs/design.md)
    _, rollover = s.terms_for(lot.period)
    moved = min(lot.remaining, rollover_cap(rollover, lot.amount))
    if moved <= 0 or rollover is None:
        return None
    at = lot.expires_at
    try:
        life_end = cadence(s).start(lot.period + 2)
    except OutOfCalendar:
        life_end = at + timedelta(days=366)
    expires = at + timedelta(seconds=rollover.life_s) if rollover.life_s else life_end
    new = Lot(
        lot_id=ws.make_id(),
        account_id=lot.account_id,
        asset=lot.asset,
        amount=moved,
        remaining=moved,
        priority=rollover.priority,
        source=f"rollover:{s.schedule_id}",
        expires_at=expires,
        created_at=at,
        category=ROLLOVER,
        unit_cost_micros=lot.unit_cost_micros,
        cost_currency=lot.cost_currency,
        schedule_id=s.schedule_id,
        period=lot.period,
    )
    ws.add_lot(new)
    tx = ws.make_id()
    acct = available(lot.account_id)
    ws.transfer(tx, lot.asset, moved, acct, ROLLED_SIDE, Movement.ROLLOVER, lot_id=lot.lot_id)
    ws.transfer(tx, lot.asset, moved, ROLLED_SIDE, acct, Movement.ROLLOVER, lot_id=new.lot_id)
    lot.remaining -= moved
    ws.dirty_lots.update((lot.lot_id, new.lot_id))
    return new


def breakage(
    ws: WorkingSet, written: list[BreakageLine], start: datetime, end: datetime
) -> list[BreakageLine]:
    """The write-offs already written (`written`) plus those catch_up made in
    `ws` (due, not yet written down), of lots expiring in [start, end), by
    category and cost basis, sorted. Attributed to the lot's expiry, the instant
    the credits were lost, so the answer does not depend on when the sweeper ran."""
    sums: dict[tuple[str, str, int | None], int] = {}
    for line in written:
        k = (line.category, line.cost_currency, line.unit_cost_micros)
        sums[k] = sums.get(k, 0) + line.credits
    for p in ws.postings:
        if p.movement is not Movement.LOT_EXPIRY or p.bucket is Bucket.SYSTEM:
            continue
        lot = ws.lots.get(p.lot_id)
        if lot is None or lot.expires_at is None or not start <= lot.expires_at < end:
            continue
        k = (lot.category, lot.cost_currency, lot.unit_cost_micros)
        sums[k] = sums.get(k, 0) - p.amount
    return [
        BreakageLine(cat, cur, unit, n)
        for (cat, cur, unit), n in sorted(
            sums.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)
        )
        if n
    ]


def as_of(s: Schedule, now: datetime) -> Schedule:
    """A copy of `s` with next_period (and next_start) as catch_up would leave
    them at `now`, without issuing anything: what a listing shows."""
    out = snapshot(s)
    if s.state is not ScheduleState.ACTIVE or s.next_start > now:
        return out
    cad = cadence(s)
    due = cad.period_at(now) + 1
    if s.ends_at is not None:
        due = min(due, cad.period_at(s.ends_at - timedelta(microseconds=1)) + 1)
    if due > out.next_period:
        out.next_period = due
        out.next_start = next_start(out)
    return out


def first_period(cad: Cadence, now: datetime) -> int:
    """The first period a schedule created at `now` issues: the one `now` is in
    (a schedule created mid-period gets that period's whole allowance at once),
    or period 0 when the anchor is still ahead."""
    return max(0, cad.period_at(now))


def snapshot(s: Schedule) -> Schedule:
    return dataclasses.replace(
        s,
        metadata=dict(s.metadata),
        rollover=dataclasses.replace(s.rollover) if s.rollover else None,
        terms=[dataclasses.replace(t) for t in s.terms],
    )


def require_in_scope(s: Schedule | None, schedule_id: str, covered: bool) -> Schedule:
    """Errors: ScheduleNotFound (also outside the caller's scope)."""
    if s is None or not covered:
        raise errors.ScheduleNotFound(
            f"grant schedule {schedule_id} not found", {"schedule_id": schedule_id}
        )
    return s


__all__ = [
    "ROLLED_SIDE",
    "Cadence",
    "Unit",
    "as_of",
    "breakage",
    "cadence",
    "first_period",
    "issue_due",
    "longest_period_s",
    "next_start",
    "roll_over",
    "rollover_cap",
    "snapshot",
]
