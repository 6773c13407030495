"""The ledger rules, applied to the rows a batch has loaded (a `WorkingSet`).

Every rule speaks in transfers (`WorkingSet.transfer`): credits leave one
(account, bucket) and enter another, so a posting cannot be unbalanced and no
balance is adjusted by hand. Every operation checks first and mutates after,
so an operation that raises a LedgerError leaves the working set as it found
it, except for what `catch_up` applied: what is due at the batch's instant is
due whatever the command then decides.
"""

from __future__ import annotations

import dataclasses
import functools
from datetime import UTC, date, datetime, timedelta

from ledger.domain import commands as c
from ledger.domain import errors, limits, schedules
from ledger.domain.access import Scope, in_scope
from ledger.domain.model import (
    REFUND,
    Allocation,
    Balance,
    CapView,
    CapWindow,
    GrantResult,
    GroupResult,
    LimitsResult,
    Lot,
    Movement,
    Overage,
    Reservation,
    ReservationResult,
    ReservationState,
    Result,
    Schedule,
    ScheduleResult,
    ScheduleState,
    Terms,
    VoidResult,
)
from ledger.domain.workingset import (
    CONSUMED_SIDE,
    EXPIRED_SIDE,
    ISSUED,
    OVERDRAFT_SIDE,
    VOIDED_SIDE,
    LotsNotLoaded,
    PairKey,
    WorkingSet,
    available,
    held,
    new_id,
)

__all__ = ["LotsNotLoaded", "PairKey", "WorkingSet", "apply", "catch_up", "new_id", "snapshot"]


def apply(ws: WorkingSet, cmd: c.MutatingCommand) -> Result:
    """Apply one validated command. Raises a recordable LedgerError on a business failure.

    The command is one change: each pair it moved gets one more version."""
    ws.end_change()
    result = _apply(ws, cmd)
    ws.end_change()
    return _with_versions(ws, result)


def _with_versions(ws: WorkingSet, result: Result) -> Result:
    """The result's balances as the command left them, with the version its change gave."""
    if isinstance(result, GrantResult):
        return GrantResult(
            ws.balance(result.balance.account_id, result.balance.asset).copy(), result.lot
        )
    if isinstance(result, ReservationResult):
        return ReservationResult(
            result.reservation, ws.balance(result.balance.account_id, result.balance.asset).copy()
        )
    if isinstance(result, LimitsResult):
        return LimitsResult(ws.balance(result.balance.account_id, result.balance.asset).copy())
    if isinstance(result, GroupResult):
        return dataclasses.replace(
            result,
            balances=tuple(ws.balance(b.account_id, b.asset).copy() for b in result.balances),
        )
    return result


def _apply(ws: WorkingSet, cmd: c.MutatingCommand) -> Result:
    if isinstance(cmd, c.Grant):
        return grant(ws, cmd)
    if isinstance(cmd, c.Reserve):
        return reserve(ws, cmd)
    if isinstance(cmd, c.Charge):
        return charge(ws, cmd)
    if isinstance(cmd, c.ReserveGroup):
        return reserve_group(ws, cmd)
    if isinstance(cmd, c.Settle):
        return settle(ws, cmd)
    if isinstance(cmd, c.Release):
        return release(ws, cmd)
    if isinstance(cmd, c.Refund):
        return refund(ws, cmd)
    if isinstance(cmd, c.SetSpendingLimits):
        return set_spending_limits(ws, cmd)
    if isinstance(cmd, c.SetMemberCap):
        return set_member_cap(ws, cmd)
    if isinstance(cmd, c.VoidGrant):
        return void_grant(ws, cmd)
    if isinstance(cmd, c.CreateGrantSchedule):
        return create_grant_schedule(ws, cmd)
    if isinstance(cmd, c.CancelGrantSchedule):
        return cancel_grant_schedule(ws, cmd)
    if isinstance(cmd, c.UpdateGrantSchedule):
        return update_grant_schedule(ws, cmd)
    if isinstance(cmd, c.ExpireDue):
        expire_due(ws, cmd)
        return None
    raise errors.InvariantViolation(f"unknown command {type(cmd).__name__}")


# ---------------------------------------------------------------- time


def catch_up(ws: WorkingSet, account_id: str, asset: str) -> None:
    """The pair as it is at `ws.now`: the only way any rule or read sees a pair.

    Every deadline that has come is applied as it was at its own instant, so the
    answer does not depend on whether anything ran in between (the sweeper runs
    this same function): first every overdue hold ends EXPIRED, oldest deadline
    first, each part going back to its lot if that lot was still live at the
    hold's expiry, else written off (the reservation's `expired`); then the
    unreserved remainder of every due lot is written off, including what a hold
    gave back to it before the lot's own expiry. Every reader and every rule
    sees the same amounts; the sweeper only makes them durable. Idempotent at
    one instant. docs/design.md, "Time".
    """
    key = (account_id, asset)
    if ws.caught_up.get(key) == ws.now:
        return
    ws.caught_up[key] = ws.now
    origin, ws.origin = ws.origin, ("", "")
    try:
        _apply_deadlines(ws, account_id, asset)
    finally:
        ws.origin, ws.effective_at = origin, None


def _apply_deadlines(ws: WorkingSet, account_id: str, asset: str) -> None:
    """catch_up's work; each posting stamped with the deadline it applies (the
    journal's effective_at: GetBalance as_of sees it at that instant), each
    deadline its own change (version) of the pair, whoever applies it."""
    key = (account_id, asset)
    schedules.issue_due(ws, account_id, asset)  # each period as at its start
    for res in ws.overdue_holds(key):
        ws.effective_at = res.expires_at
        _give_back(
            ws, ws.make_id(), res, res.remaining, Movement.RESERVATION_EXPIRY, res.expires_at
        )
        ws.end_hold(res, ReservationState.EXPIRED)
        ws.end_change()
    due = [lot for lot in ws.spendable_lots(key) if lot.expired_at(ws.now)]
    while due:
        lot = due.pop(0)
        ws.effective_at = lot.expires_at
        rolled = schedules.roll_over(ws, lot)  # a schedule's allowance: first its rollover
        if rolled is not None:
            ws.end_change()  # the rollover is a transaction of its own
            if rolled.expired_at(ws.now):
                due.append(rolled)
        if lot.remaining == 0:
            continue
        ws.effective_at = lot.expires_at
        ws.transfer(
            ws.make_id(),
            asset,
            lot.remaining,
            available(account_id),
            EXPIRED_SIDE,
            Movement.LOT_EXPIRY,
            lot_id=lot.lot_id,
        )
        lot.remaining = 0
        ws.dirty_lots.add(lot.lot_id)
        ws.end_change()


def check_preconditions(
    ws: WorkingSet,
    preconditions: tuple[c.Precondition, ...],
    own: PairKey | None = None,
    pooled: bool = False,
) -> None:
    """Every condition the request carried, on its pair as it is now (caught up).
    An empty pair is `own`, the pair the command touches; `pooled` (a spend): a
    named pair may also be one of own's pools (ancestors), whose lots it may draw.
    Errors: InvalidArgument (a pair that is neither; never recorded),
    PreconditionFailed."""
    if pooled and own is not None:
        allowed = {(acct, own[1]) for acct in (own[0], *ws.ancestors.get(own[0], ()))}
        for i, p in enumerate(preconditions):
            if p.account_id and (p.account_id, p.asset) not in allowed:
                raise errors.InvalidArgument(
                    [
                        errors.FieldViolation(
                            f"preconditions[{i}].account_id",
                            "must name the account, one of its pools (ancestors), or be empty",
                        )
                    ]
                )
    for p in preconditions:
        key = (p.account_id, p.asset) if p.account_id or own is None else own
        catch_up(ws, *key)
        bal = ws.balance(*key)
        failed = ""
        if p.version is not None and bal.version != p.version:
            failed, expected, actual = "version", str(p.version), bal.version
        elif p.available is not None and not p.available.holds(bal.available):
            failed, expected, actual = "available", str(p.available), bal.available
        elif p.held is not None and not p.held.holds(bal.reserved):
            failed, expected, actual = "held", str(p.held), bal.reserved
        if failed:
            raise errors.PreconditionFailed(
                f"precondition failed on {key[0]}/{key[1]}: {failed} is {actual}, expected"
                f" {expected}; nothing changed",
                {
                    "account_id": key[0],
                    "asset": key[1],
                    "failed": failed,
                    "expected": expected,
                    "version": str(bal.version),
                    "available": str(bal.available),
                    "held": str(bal.reserved),
                },
            )


def expire_due(ws: WorkingSet, cmd: c.ExpireDue) -> None:
    """The sweeper's work: make durable what is due among the given pairs and reservations."""
    for reservation_id in cmd.reservation_ids:
        res = ws.reservations.get(reservation_id)
        if res is not None:
            catch_up(ws, res.account_id, res.asset)
    for account_id, asset in cmd.lot_pairs:
        catch_up(ws, account_id, asset)


def _available(ws: WorkingSet, account_id: str, asset: str) -> int:
    """Available at `ws.now`; checked against the lots it must equal when all are loaded."""
    catch_up(ws, account_id, asset)
    bal = ws.balance(account_id, asset)
    if (account_id, asset) in ws.lot_horizon:
        return bal.available
    from_lots = sum(lot.remaining for lot in ws.spendable_lots((account_id, asset)))
    if from_lots != bal.available:
        raise errors.InvariantViolation(
            f"balance {account_id}/{asset}: available {bal.available} != lots {from_lots}"
        )
    return bal.available


# ---------------------------------------------------------------- grants and lots


def grant(ws: WorkingSet, cmd: c.Grant) -> GrantResult:
    """Errors: InvalidArgument (expiry not in the future; never recorded), AccountNotFound,
    LotLimitExceeded, BalanceLimitExceeded, TopUpRequestNotPending."""
    if cmd.expires_at is not None and cmd.expires_at <= ws.now:
        raise errors.InvalidArgument([errors.FieldViolation("expires_at", "must be in the future")])
    _require_account(ws, cmd.account_id, scope=cmd.scope)
    key = (cmd.account_id, cmd.asset)
    catch_up(ws, *key)
    check_preconditions(ws, cmd.preconditions, key)
    if key in ws.lot_horizon:
        raise LotsNotLoaded({key})
    live = len(ws.spendable_lots(key))
    if live >= limits.LIVE_LOTS_PER_PAIR_MAX:
        raise errors.LotLimitExceeded(
            f"{cmd.account_id} has {live} live lots of {cmd.asset}, the most one account may hold"
            f" per asset (LIVE_LOTS_PER_PAIR_MAX {limits.LIVE_LOTS_PER_PAIR_MAX}); spend, let expire"
            " or consolidate them first",
            {"limit": str(limits.LIVE_LOTS_PER_PAIR_MAX), "live_lots": str(live)},
        )
    bal = ws.balance(*key)
    if bal.available + bal.reserved + cmd.amount > limits.INT64_MAX:
        raise errors.BalanceLimitExceeded(
            f"granting {cmd.amount} would push the balance of {cmd.asset} past int64 (INT64_MAX)",
            {"limit": str(limits.INT64_MAX), "requested": str(cmd.amount)},
        )
    # Last of the checks: settling changes the alert, and nothing may fail after it.
    if cmd.top_up_request_id and not ws.settle_top_up(key, cmd.top_up_request_id):
        raise errors.TopUpRequestNotPending(
            f"{cmd.top_up_request_id} is no pending top-up request of {cmd.account_id}"
            f" {cmd.asset}: never requested there, or settled by another Grant already",
            {"top_up_request_id": cmd.top_up_request_id},
        )
    lot = Lot(
        lot_id=ws.make_id(),
        account_id=cmd.account_id,
        asset=cmd.asset,
        amount=cmd.amount,
        remaining=cmd.amount,
        priority=cmd.priority,
        source=cmd.source,
        expires_at=cmd.expires_at,
        created_at=ws.now,
        category=cmd.category,
        unit_cost_micros=cmd.unit_cost_micros,
        cost_currency=cmd.cost_currency,
    )
    ws.add_lot(lot)
    ws.dirty_lots.add(lot.lot_id)
    tx = ws.make_id()
    ws.transfer(
        tx,
        cmd.asset,
        cmd.amount,
        ISSUED,
        available(cmd.account_id),
        Movement.GRANT,
        lot_id=lot.lot_id,
    )
    ws.repay_debt(tx, lot)
    return GrantResult(bal.copy(), dataclasses.replace(lot))


def _draw(ws: WorkingSet, account_id: str, asset: str, amount: int) -> list[tuple[Lot, int]]:
    """Take `amount` from the pair's live lots in spend order: the one way credits
    leave lots. Plans first, then takes, so LotsNotLoaded leaves nothing changed."""
    key = (account_id, asset)
    horizon = ws.lot_horizon.get(key)
    plan: list[tuple[Lot, int]] = []
    left = amount
    for lot in ws.spendable_lots(key):
        if horizon is not None and lot.spend_order() > horizon:
            break  # lots not loaded may come before this one
        take = min(lot.remaining, left)
        plan.append((lot, take))
        left -= take
        if left == 0:
            break
    if left and horizon is not None:
        raise LotsNotLoaded({key})
    if left:
        raise errors.InvariantViolation(f"lots of {account_id}/{asset} short by {left} after check")
    for lot, take in plan:
        lot.remaining -= take
        ws.dirty_lots.add(lot.lot_id)
    return plan


# ---------------------------------------------------------------- holds


def _insufficient(
    account_id: str, asset: str, available_now: int, requested: int, leg_key: str = ""
) -> errors.InsufficientCredits:
    meta = {
        "account_id": account_id,
        "asset": asset,
        "available": str(available_now),
        "requested": str(requested),
    }
    where = ""
    if leg_key:
        meta["leg_key"] = leg_key
        where = f" (leg {leg_key!r})"
    return errors.InsufficientCredits(
        f"{account_id} has {available_now} {asset} available, {requested} requested{where}", meta
    )


def _new_reservation(ws: WorkingSet, account_id: str, asset: str, amount: int) -> Reservation:
    return Reservation(
        reservation_id=ws.make_id(),
        account_id=account_id,
        asset=asset,
        amount=amount,
        settled=0,
        released=0,
        refunded=0,
        state=ReservationState.OPEN,
        created_at=ws.now,
        expires_at=ws.now,
        metadata={},
    )


def _hold(ws: WorkingSet, tx: str, res: Reservation, plan: Plan) -> Reservation:
    """Move the reservation's amount from available to held, lot by lot, on each
    funding pair of the plan (on its own account: a split hold's parts stay on
    the lots they came from). Caller checked."""
    for account_id, amount in plan:
        for lot, take in _draw(ws, account_id, res.asset, amount):
            res.allocations.append(_allocation(res, lot, take))
            ws.transfer(
                tx,
                res.asset,
                take,
                available(account_id),
                held(account_id),
                Movement.RESERVE,
                res.reservation_id,
                lot.lot_id,
            )
    ws.add_reservation(res)
    ws.dirty_reservations.add(res.reservation_id)
    _count(ws, res, held_by=res.amount)
    return res


def _ttl(ttl_s: float | None) -> timedelta:
    return timedelta(seconds=limits.TTL_DEFAULT_S if ttl_s is None else ttl_s)


# ---------------------------------------------------------------- shared pools and member caps


# A spend's funding: (account whose lots fund it, how much), the member first,
# then its pools nearest first; only accounts that give something.
Plan = list[tuple[str, int]]


def _chain(ws: WorkingSet, account_id: str) -> tuple[str, ...]:
    """The account and its ancestors, nearest first: the order a spend draws in."""
    return (account_id, *ws.ancestors.get(account_id, ()))


def funder(ws: WorkingSet, account_id: str, asset: str) -> str:
    """The account whose lots a spend of `account_id` draws first: its own when
    it has spendable lots of the asset, else the nearest ancestor that has, else
    the nearest that may go below zero (docs/design.md, "Shared pools"); its own
    when none. Every pair on the way is caught up first."""
    chain = _chain(ws, account_id)
    for acct in chain:
        catch_up(ws, acct, asset)
    for acct in chain:
        if ws.balance(acct, asset).spendable > 0:
            return acct
    return next((a for a in chain if ws.balance(a, asset).floor < 0), account_id)


def chain_spendable(ws: WorkingSet, account_id: str, asset: str) -> int:
    """What a REJECT-mode spend of the account may take from lots now, caps aside:
    its own spendable plus every ancestor's (GetBalance's may_spend before caps)."""
    total = 0
    for acct in _chain(ws, account_id):
        catch_up(ws, acct, asset)
        total += max(0, ws.balance(acct, asset).spendable)
    return total


def _funding(
    ws: WorkingSet,
    member: str,
    asset: str,
    amount: int,
    overage: str,
    taken: dict[PairKey, int] | None = None,
    leg_key: str = "",
) -> Plan:
    """Split a spend of `amount` over the member's own spendable lots first, then
    its nearest pool's, then the next pool's, as far as needed (docs/design.md,
    "Shared pools"): each pair gives what it may spend down to zero, less what
    `taken` (earlier legs of one group) already takes of it. REJECT: all or
    nothing; CAP: what the chain has, up to the amount (maybe nothing: []);
    DEBT: all or nothing, what the lots lack lent by one pair only, the nearest
    in the chain (the member first) whose floor is below zero, down to its floor.
    Shared by Reserve, Charge and each ReserveGroup leg.
    Errors: InsufficientCredits (REJECT, DEBT; metadata funded_by: the chain's
    accounts that had something, beyond the member)."""
    taken = taken or {}
    mode = Overage(overage)
    chain = _chain(ws, member)
    give: dict[str, int] = {}
    left, room_total = amount, 0
    for acct in chain:
        _available(ws, acct, asset)  # caught up, and checked against its lots
        room = max(0, ws.balance(acct, asset).spendable - taken.get((acct, asset), 0))
        room_total += room
        take = min(room, left)
        if take:
            give[acct] = take
            left -= take
    if mode is Overage.DEBT:
        lender = next((a for a in chain if ws.balance(a, asset).floor < 0), None)
        if lender is not None:
            bal = ws.balance(lender, asset)
            extra = max(
                0, bal.spendable_in_debt - taken.get((lender, asset), 0) - give.get(lender, 0)
            )
            room_total += extra
            lend = min(extra, left)
            if lend:
                give[lender] = give.get(lender, 0) + lend
                left -= lend
    if left and mode is not Overage.CAP:
        exc = _insufficient(member, asset, room_total, amount, leg_key)
        others = [a for a in chain[1:] if a in give or ws.balance(a, asset).spendable > 0]
        if others:
            exc.metadata["funded_by"] = ",".join(others)
        raise exc
    return [(acct, give[acct]) for acct in chain if give.get(acct)]


def _allocation(res: Reservation, lot: Lot, take: int, settled: int = 0) -> Allocation:
    """The part of `res` drawn from `lot`, naming the lot's account when it is not
    the reservation's."""
    other = lot.account_id if lot.account_id != res.account_id else ""
    return Allocation(lot.lot_id, take, settled=settled, account_id=other)


def _filed(res: Reservation, member: str, plan: Plan) -> None:
    """A spend's reservation is filed under the farthest account whose lots fund
    it (so that every funding pair's load finds it among its own or its
    ancestors' holds), for the member that spent (member_id) when that is not
    the member itself."""
    res.account_id = plan[-1][0] if plan else member
    res.member_id = member if res.account_id != member else ""


@functools.lru_cache(maxsize=16)
def _windows(now: datetime) -> tuple[str, str]:
    """The UTC day and calendar month `now` is in, as their first days (ISO).
    Cached: a batch asks for its one `now` several times per command."""
    day = now.astimezone(UTC).date()
    return day.isoformat(), day.replace(day=1).isoformat()


def _roll(bal: Balance, now: datetime) -> None:
    """A cap window's counter restarts at its boundary: computed, never swept."""
    day, month = _windows(now)
    if bal.day_start != day:
        bal.spent_day, bal.day_start = 0, day
    if bal.month_start != month:
        bal.spent_month, bal.month_start = 0, month


def _next_boundary(window: CapWindow, now: datetime) -> datetime | None:
    day = now.astimezone(UTC).date()
    if window is CapWindow.DAY:
        nxt = day + timedelta(days=1)
    elif window is CapWindow.MONTH:
        nxt = date(day.year + day.month // 12, day.month % 12 + 1, 1)
    else:
        return None
    return datetime(nxt.year, nxt.month, nxt.day, tzinfo=UTC)


def cap_views(ws: WorkingSet, account_id: str, asset: str) -> tuple[CapView, ...]:
    """The pair's caps at `ws.now`: each checked against what its account's spends
    settled in the window plus what they hold now (on whatever pair)."""
    for acct in ws.ancestors.get(account_id, ()):
        catch_up(ws, acct, asset)  # a pool's expired holds give the member's back
    catch_up(ws, account_id, asset)
    bal = ws.balance(account_id, asset)
    _roll(bal, ws.now)
    out = []
    for window, cap, spent in (
        (CapWindow.DAY, bal.cap_day, bal.spent_day),
        (CapWindow.MONTH, bal.cap_month, bal.spent_month),
        (CapWindow.LIFETIME, bal.cap_lifetime, bal.spent_total),
    ):
        if cap is not None:
            used = spent + bal.cap_held
            out.append(
                CapView(window, cap, used, max(0, cap - used), _next_boundary(window, ws.now))
            )
    return tuple(out)


def _cap_room(ws: WorkingSet, account_id: str, asset: str) -> tuple[int | None, CapView | None]:
    """What the caps leave (None: no cap) and the tightest one."""
    views = cap_views(ws, account_id, asset)
    if not views:
        return None, None
    tightest = min(views, key=lambda v: v.remaining)
    return tightest.remaining, tightest


def _cap_exceeded(
    account_id: str, asset: str, view: CapView, requested: int, leg_key: str = ""
) -> errors.CapExceeded:
    meta = {
        "account_id": account_id,
        "asset": asset,
        "window": view.window.value,
        "cap": str(view.cap),
        "used": str(view.used),
        "remaining": str(view.remaining),
        "requested": str(requested),
    }
    if leg_key:
        meta["leg_key"] = leg_key
    return errors.CapExceeded(
        f"{account_id} may spend {view.remaining} more {asset} this {view.window.value} (cap"
        f" {view.cap}, used {view.used}), {requested} requested; nothing changed",
        meta,
    )


def _count(ws: WorkingSet, res: Reservation, held_by: int = 0, spent: int = 0) -> None:
    """The spender's cap counters follow its holds and settles (whoever's lots)."""
    key = (res.spender, res.asset)
    bal = ws.balances.get(key)
    if bal is None:
        raise errors.InvariantViolation(f"cap counters of {key} not loaded")
    if spent:
        _roll(bal, ws.now)
        bal.spent_day += spent
        bal.spent_month += spent
        bal.spent_total = min(bal.spent_total + spent, limits.INT64_MAX)
    # Never below 0 (the column's CHECK): a hold an old writer made during a rollout
    # was never counted (docs/operations.md, migrations 0011-0012; verify reports it).
    bal.cap_held = max(0, bal.cap_held + held_by)
    ws.dirty_balances.add(key)


def set_member_cap(ws: WorkingSet, cmd: c.SetMemberCap) -> LimitsResult:
    """Errors: AccountNotFound, PreconditionFailed. The same cap again changes nothing."""
    _require_account(ws, cmd.account_id, scope=cmd.scope)
    key = (cmd.account_id, cmd.asset)
    catch_up(ws, *key)
    check_preconditions(ws, cmd.preconditions, key)
    bal = ws.balance(*key)
    name = f"cap_{cmd.window}"
    if getattr(bal, name) != cmd.cap:
        setattr(bal, name, cmd.cap)
        ws.limit_changes.append((cmd.account_id, cmd.asset, name, cmd.cap, ws.make_id()))
        ws.dirty_balances.add(key)
        ws.changing.add(key)
    return LimitsResult(bal.copy())


def _spend_plan(ws: WorkingSet, account_id: str, asset: str, amount: int, overage: str) -> Plan:
    """Where a Reserve or Charge takes its credits: the member's caps first (CAP
    mode: what they leave), then the chain's lots by the overage mode
    (`_funding`; docs/design.md, "Spending limits" and "Shared pools").
    Errors: CapExceeded, InsufficientCredits."""
    room, tightest = _cap_room(ws, account_id, asset)
    if room is not None and tightest is not None:
        if overage == Overage.CAP.value:
            amount = min(amount, room)
        elif room < amount:
            raise _cap_exceeded(account_id, asset, tightest, amount)
    if amount == 0:
        return []
    return _funding(ws, account_id, asset, amount, overage)


# ---------------------------------------------------------------- overage modes


def _borrow(ws: WorkingSet, tx: str, account_id: str, asset: str, amount: int) -> None:
    """Before a spend of `amount`: lend the pair what its lots lack, as a lot of its
    own (source "overdraft", spent last) funded by @overdraft (movement DEBT), so
    that holds, settles, releases and refunds treat it as any lot."""
    bal = ws.balance(account_id, asset)
    lent = amount - bal.available
    if lent <= 0:
        return
    key = (account_id, asset)
    if key in ws.lot_horizon:
        raise LotsNotLoaded({key})  # every lot is spent first: have them all
    lot = Lot(
        lot_id=ws.make_id(),
        account_id=account_id,
        asset=asset,
        amount=lent,
        remaining=lent,
        priority=limits.PRIORITY_MAX,
        source="overdraft",
        expires_at=None,
        created_at=ws.now,
    )
    ws.add_lot(lot)
    ws.dirty_lots.add(lot.lot_id)
    ws.transfer(
        tx, asset, lent, OVERDRAFT_SIDE, available(account_id), Movement.DEBT, lot_id=lot.lot_id
    )


def _nothing_taken(ws: WorkingSet, account_id: str, asset: str, member: str) -> ReservationResult:
    """CAP with nothing spendable: an answer (0 taken), recorded and replayed, no
    reservation stored (its id is empty) and nothing changed."""
    res = _new_reservation(ws, account_id, asset, 0)
    res.state = ReservationState.CLOSED
    res.reservation_id = ""
    res.member_id = member if member != account_id else ""
    return ReservationResult(snapshot(res), ws.balance(account_id, asset).copy())


def set_spending_limits(ws: WorkingSet, cmd: c.SetSpendingLimits) -> LimitsResult:
    """Errors: AccountNotFound, PreconditionFailed. The same floor again changes nothing."""
    _require_account(ws, cmd.account_id, scope=cmd.scope)
    key = (cmd.account_id, cmd.asset)
    catch_up(ws, *key)
    check_preconditions(ws, cmd.preconditions, key)
    bal = ws.balance(*key)
    if bal.floor != cmd.floor:
        bal.floor = cmd.floor
        ws.limit_changes.append((cmd.account_id, cmd.asset, "floor", cmd.floor, ws.make_id()))
        ws.dirty_balances.add(key)
        ws.changing.add(key)
    return LimitsResult(bal.copy())


def reserve(ws: WorkingSet, cmd: c.Reserve) -> ReservationResult:
    """One hold, maybe split over the member's own lots and its pools' (_funding).
    Errors: AccountNotFound, PreconditionFailed, CapExceeded, InsufficientCredits."""
    _require_account(ws, cmd.account_id, scope=cmd.scope)
    check_preconditions(ws, cmd.preconditions, (cmd.account_id, cmd.asset), pooled=True)
    plan = _spend_plan(ws, cmd.account_id, cmd.asset, cmd.amount, cmd.overage)
    if not plan:
        return _nothing_taken(ws, funder(ws, cmd.account_id, cmd.asset), cmd.asset, cmd.account_id)
    tx = ws.make_id()
    for account_id, amount in plan:
        _borrow(ws, tx, account_id, cmd.asset, amount)
    res = _new_reservation(ws, cmd.account_id, cmd.asset, sum(n for _, n in plan))
    _filed(res, cmd.account_id, plan)
    res.expires_at = ws.now + _ttl(cmd.ttl_s)
    res.metadata = dict(cmd.metadata)
    return _result(ws, _hold(ws, tx, res, plan))


def reserve_group(ws: WorkingSet, cmd: c.ReserveGroup) -> GroupResult:
    """All legs or none, across members of one pool and across pools: each leg's
    caps, then its funding pair's room with every earlier leg on it counted, by
    the group's overage mode (`_leg_amount`, `_funding`). With CAP a leg may take less, or 0:
    such a leg is in the reply (amount 0, no id) but not stored; a group that
    took nothing at all has no id. Errors: AccountNotFound, PreconditionFailed,
    CapExceeded, InsufficientCredits (naming the leg)."""
    if cmd.preconditions:
        for leg in cmd.legs:
            _require_account(ws, leg.account_id, leg.leg_key, cmd.scope)
        check_preconditions(ws, cmd.preconditions)
    needed: dict[PairKey, int] = {}
    capped: dict[PairKey, int] = {}
    plans: list[Plan] = []
    for leg in cmd.legs:
        _require_account(ws, leg.account_id, leg.leg_key, cmd.scope)
        member = (leg.account_id, leg.asset)
        amount = _leg_amount(ws, cmd.overage, leg, capped.get(member, 0))
        # Own lots first, then each pool's (_funding), by the group's mode, with
        # what earlier legs take of each pair counted.
        plan = (
            _funding(ws, leg.account_id, leg.asset, amount, cmd.overage, needed, leg.leg_key)
            if amount
            else []
        )
        plans.append(plan)
        if not plan:  # a leg that takes 0 still shows its funding pair's balance
            needed.setdefault((funder(ws, leg.account_id, leg.asset), leg.asset), 0)
        capped[member] = capped.get(member, 0) + sum(n for _, n in plan)
        for account_id, part in plan:
            needed[(account_id, leg.asset)] = needed.get((account_id, leg.asset), 0) + part
    group_id = ws.make_id() if any(plans) else ""
    tx = ws.make_id()
    for key, total in needed.items():
        if total:
            _borrow(ws, tx, *key, total)  # DEBT: what the lots lack (a no-op otherwise)
    legs = []
    carried = False
    for index, (leg, plan) in enumerate(zip(cmd.legs, plans, strict=True)):
        res = _new_reservation(ws, leg.account_id, leg.asset, sum(n for _, n in plan))
        _filed(res, leg.account_id, plan)
        res.group_id, res.leg_key, res.leg_index = group_id, leg.leg_key, index
        if not plan:  # CAP took nothing for this leg: an answer, nothing stored
            _filed(res, leg.account_id, [(funder(ws, leg.account_id, leg.asset), 0)])
            res.reservation_id, res.state = "", ReservationState.CLOSED
            legs.append(res)
            continue
        res.expires_at = ws.now + _ttl(cmd.ttl_s)
        # The group's metadata is stored once, on its first stored leg (issue 15:
        # copied onto 100 legs it multiplied what a caller could store); replies
        # show it on every leg (ledger.service.groups).
        res.metadata = {} if carried else dict(cmd.metadata)
        carried = True
        legs.append(_hold(ws, tx, res, plan))
    if not carried and legs:
        legs[0].metadata = dict(cmd.metadata)  # nothing stored: the reply still shows it
    balances = tuple(ws.balance(*key).copy() for key in sorted(needed))
    return GroupResult(group_id, [snapshot(r) for r in legs], balances)


def _leg_amount(ws: WorkingSet, overage: str, leg: c.Leg, capped_before: int) -> int:
    """What one leg of a ReserveGroup may ask its funding chain for, by its
    member's caps with the earlier legs of the same member counted: CAP mode
    what they leave (possibly 0, never refused); otherwise the leg's amount, or
    the whole group fails naming the leg. The chain's lots, the floors and the
    overage mode are then `_funding`'s (docs/design.md, "Spending limits").
    Errors: CapExceeded (metadata leg_key)."""
    room, tightest = _cap_room(ws, leg.account_id, leg.asset)
    if room is None or tightest is None:
        return leg.amount
    left = room - capped_before
    if overage == Overage.CAP.value:
        return max(0, min(leg.amount, left))
    if left < leg.amount:
        shown = dataclasses.replace(tightest, remaining=left)
        raise _cap_exceeded(leg.account_id, leg.asset, shown, leg.amount, leg.leg_key)
    return leg.amount


def charge(ws: WorkingSet, cmd: c.Charge) -> ReservationResult:
    """Reserve and settle in one step, maybe split over the member's own lots and
    its pools' (_funding). Errors: AccountNotFound, PreconditionFailed,
    CapExceeded, InsufficientCredits."""
    _require_account(ws, cmd.account_id, scope=cmd.scope)
    check_preconditions(ws, cmd.preconditions, (cmd.account_id, cmd.asset), pooled=True)
    plan = _spend_plan(ws, cmd.account_id, cmd.asset, cmd.amount, cmd.overage)
    if not plan:
        return _nothing_taken(ws, funder(ws, cmd.account_id, cmd.asset), cmd.asset, cmd.account_id)
    tx = ws.make_id()
    for account_id, amount in plan:
        _borrow(ws, tx, account_id, cmd.asset, amount)
    amount = sum(n for _, n in plan)
    res = _new_reservation(ws, cmd.account_id, cmd.asset, amount)
    _filed(res, cmd.account_id, plan)
    res.metadata = dict(cmd.metadata)
    for account_id, part in plan:
        for lot, take in _draw(ws, account_id, cmd.asset, part):
            res.allocations.append(_allocation(res, lot, take, settled=take))
            # Straight from available to consumed: the hold would be undone in the same step.
            ws.transfer(
                tx,
                cmd.asset,
                take,
                available(account_id),
                CONSUMED_SIDE,
                Movement.SETTLE,
                res.reservation_id,
                lot.lot_id,
            )
    res.settled = amount
    ws.add_reservation(res)
    ws.end_hold(res, ReservationState.CLOSED)
    _count(ws, res, spent=amount)
    return _result(ws, res)


# ---------------------------------------------------------------- settle, release, refund


def _reservation_now(ws: WorkingSet, reservation_id: str, scope: Scope = None) -> Reservation:
    """The reservation as it is at `ws.now` (any state: its pair caught up first).
    Errors: ReservationNotFound, also when its account is outside the caller's
    scope (checked before any change)."""
    res = ws.reservations.get(reservation_id)
    if res is None or not in_scope(scope, res.spender):
        raise errors.ReservationNotFound(f"reservation {reservation_id} not found")
    for account_id in sorted(res.held_on()):  # every pair a split hold is on
        catch_up(ws, account_id, res.asset)
    return res


def _require_state_open(res: Reservation) -> None:
    if res.state is ReservationState.EXPIRED:
        raise errors.ReservationExpired(
            f"reservation {res.reservation_id} expired at {res.expires_at.isoformat()}; what it"
            " still held went back to its lots, or was written off where the lot had expired",
            {"reservation_id": res.reservation_id, "expires_at": res.expires_at.isoformat()},
        )
    if res.state is ReservationState.CLOSED:
        raise errors.ReservationClosed(
            f"reservation {res.reservation_id} is closed; only Refund applies",
            {"reservation_id": res.reservation_id},
        )


def _exceeds_remaining(res: Reservation, requested: int) -> errors.AmountExceedsRemaining:
    return errors.AmountExceedsRemaining(
        f"{requested} requested but reservation {res.reservation_id} holds {res.remaining}",
        {"remaining": str(res.remaining), "requested": str(requested)},
    )


def settle(ws: WorkingSet, cmd: c.Settle) -> ReservationResult:
    """Errors: ReservationNotFound, ReservationExpired, ReservationClosed, AmountExceedsRemaining."""
    res = _reservation_now(ws, cmd.reservation_id, cmd.scope)
    check_preconditions(ws, cmd.preconditions, (res.account_id, res.asset))
    _require_state_open(res)
    if cmd.amount > res.remaining:
        raise _exceeds_remaining(res, cmd.amount)
    tx = ws.make_id()
    left = cmd.amount
    for alloc in res.allocations:
        take = min(alloc.remaining, left)
        if take == 0:
            continue
        alloc.settled += take
        left -= take
        ws.transfer(
            tx,
            res.asset,
            take,
            held(res.account_of(alloc)),
            CONSUMED_SIDE,
            Movement.SETTLE,
            res.reservation_id,
            alloc.lot_id,
        )
    _moved_all(res, "settled", left)
    res.settled += cmd.amount
    _count(ws, res, held_by=-cmd.amount, spent=cmd.amount)
    ws.dirty_reservations.add(res.reservation_id)
    if cmd.final and res.remaining:
        _give_back(ws, tx, res, res.remaining, Movement.RELEASE)
    if res.remaining == 0:
        ws.end_hold(res, ReservationState.CLOSED)
    return _result(ws, res)


def _lot_of(ws: WorkingSet, res: Reservation, alloc: Allocation) -> Lot:
    """The lot an allocation came from; the batch loads every one of them."""
    lot = ws.lots.get(alloc.lot_id)
    if lot is None:
        raise errors.InvariantViolation(
            f"lot {alloc.lot_id} of reservation {res.reservation_id} not loaded"
        )
    return lot


def _moved_all(res: Reservation, what: str, left: int) -> None:
    """Postcondition of every movement over allocations: they covered the amount."""
    if left:
        raise errors.InvariantViolation(
            f"reservation {res.reservation_id}: allocations {what} short by {left}"
        )


def _give_back(
    ws: WorkingSet,
    tx: str,
    res: Reservation,
    amount: int,
    movement: Movement,
    at: datetime | None = None,
) -> None:
    """Give `amount` of the hold back to its lots, as at the instant `at` (default
    now); parts of lots that had expired by then are written off."""
    at = ws.now if at is None else at
    left = amount
    for alloc in res.allocations:
        take = min(alloc.remaining, left)
        if take == 0:
            continue
        left -= take
        lot = _lot_of(ws, res, alloc)
        account_id = res.account_of(alloc)  # each part on its own lot's account
        if lot.expired_at(at):
            # Never brought back to life: the held part of an expired lot is written off.
            ws.transfer(
                tx,
                res.asset,
                take,
                held(account_id),
                EXPIRED_SIDE,
                Movement.LOT_EXPIRY,
                res.reservation_id,
                lot.lot_id,
            )
            alloc.expired += take
            res.expired += take
        else:
            ws.transfer(
                tx,
                res.asset,
                take,
                held(account_id),
                available(account_id),
                movement,
                res.reservation_id,
                lot.lot_id,
            )
            alloc.released += take
            res.released += take
            lot.remaining += take
            ws.dirty_lots.add(lot.lot_id)
    _moved_all(res, "released", left)
    ws.dirty_reservations.add(res.reservation_id)
    _count(ws, res, held_by=-amount)


def release(ws: WorkingSet, cmd: c.Release) -> ReservationResult:
    """Errors: ReservationNotFound, ReservationExpired, ReservationClosed, AmountExceedsRemaining."""
    res = _reservation_now(ws, cmd.reservation_id, cmd.scope)
    check_preconditions(ws, cmd.preconditions, (res.account_id, res.asset))
    _require_state_open(res)
    amount = cmd.amount or res.remaining
    if amount > res.remaining:
        raise _exceeds_remaining(res, amount)
    _give_back(ws, ws.make_id(), res, amount, Movement.RELEASE)
    if res.remaining == 0:
        ws.end_hold(res, ReservationState.CLOSED)
    return _result(ws, res)


def _refund_lot(ws: WorkingSet, res: Reservation, alloc: Allocation, amount: int) -> Lot:
    """Where refunded credits go: their lot, or if it expired, a new lot that
    lives `refund_grace` with the old one's priority and cost basis (category
    `refund`)."""
    lot = _lot_of(ws, res, alloc)
    if lot.expired_at(ws.now):
        lot = Lot(
            lot_id=ws.make_id(),
            account_id=lot.account_id,
            asset=res.asset,
            amount=amount,
            remaining=0,
            priority=lot.priority,
            source="refund",
            expires_at=ws.now + ws.refund_grace,
            created_at=ws.now,
            category=REFUND,
            unit_cost_micros=lot.unit_cost_micros,
            cost_currency=lot.cost_currency,
        )
        ws.add_lot(lot)
    lot.remaining += amount
    ws.dirty_lots.add(lot.lot_id)
    return lot


def refund(ws: WorkingSet, cmd: c.Refund) -> ReservationResult:
    """Give settled credits back, never more than settled - refunded (also the
    reservations table's CHECK and verify's `reservation_caps`: docs/design.md).
    Works on open, closed and expired reservations.
    Errors: ReservationNotFound, AmountExceedsSettled."""
    res = _reservation_now(ws, cmd.reservation_id, cmd.scope)
    check_preconditions(ws, cmd.preconditions, (res.account_id, res.asset))
    refundable = res.settled - res.refunded
    if cmd.amount > refundable:
        raise errors.AmountExceedsSettled(
            f"{cmd.amount} requested but only {refundable} of reservation {res.reservation_id} is refundable",
            {"refundable": str(refundable), "requested": str(cmd.amount)},
        )
    tx = ws.make_id()
    left = cmd.amount
    # Last drawn, first given back: a partial refund undoes the spend from its end.
    for alloc in reversed(res.allocations):
        take = min(alloc.settled - alloc.refunded, left)
        if take == 0:
            continue
        alloc.refunded += take
        left -= take
        lot = _refund_lot(ws, res, alloc, take)  # on the account it came from
        ws.transfer(
            tx,
            res.asset,
            take,
            CONSUMED_SIDE,
            available(lot.account_id),
            Movement.REFUND,
            res.reservation_id,
            lot.lot_id,
        )
    _moved_all(res, "refunded", left)
    res.refunded += cmd.amount
    ws.dirty_reservations.add(res.reservation_id)
    return _result(ws, res)


# ---------------------------------------------------------------- voids


def void_grant(ws: WorkingSet, cmd: c.VoidGrant) -> VoidResult:
    """Take back unspent credits of one lot, at `ws.now` (after catch_up: an
    expired lot has nothing left to void): available -x, @voided +x, movement
    `void`. The lot keeps its amount and its history; only `remaining` falls.
    Errors: LotNotFound (also outside the caller's scope), CreditsHeld (the
    amount needs credits open reservations hold; metadata `held`),
    AmountExceedsUnspent (more than unspent and held together, or nothing left)."""
    lot = ws.lots.get(cmd.lot_id)
    if lot is None or not in_scope(cmd.scope, lot.account_id):
        raise errors.LotNotFound(f"lot {cmd.lot_id} not found", {"lot_id": cmd.lot_id})
    catch_up(ws, lot.account_id, lot.asset)
    held_now = ws.held_from(lot)
    amount = cmd.amount or lot.remaining
    meta = {
        "lot_id": lot.lot_id,
        "unspent": str(lot.remaining),
        "held": str(held_now),
        "requested": str(cmd.amount),
    }
    if amount == 0 or amount > lot.remaining:
        if held_now and (cmd.amount == 0 or amount <= lot.remaining + held_now):
            raise errors.CreditsHeld(
                f"lot {lot.lot_id} has {lot.remaining} unspent credits that can be voided;"
                f" {held_now} more are held by open reservations and cannot be: settle or"
                " release them first",
                meta,
            )
        raise errors.AmountExceedsUnspent(
            f"{cmd.amount or 'all'} requested but lot {lot.lot_id} has {lot.remaining}"
            " unspent credits",
            meta,
        )
    ws.transfer(
        ws.make_id(),
        lot.asset,
        amount,
        available(lot.account_id),
        VOIDED_SIDE,
        Movement.VOID,
        lot_id=lot.lot_id,
    )
    lot.remaining -= amount
    ws.dirty_lots.add(lot.lot_id)
    bal = ws.balance(lot.account_id, lot.asset).copy()
    return VoidResult(bal, dataclasses.replace(lot), amount)


# ---------------------------------------------------------------- grant schedules


def create_grant_schedule(ws: WorkingSet, cmd: c.CreateGrantSchedule) -> ScheduleResult:
    """Create the schedule and issue the period `ws.now` is in at once (a
    schedule created mid-period gets that period's whole amount; none before).
    Errors: InvalidArgument (an end not after now; never recorded),
    AccountNotFound, ScheduleLimitExceeded."""
    anchor = cmd.anchor or ws.now
    if cmd.ends_at is not None and cmd.ends_at <= ws.now:
        raise errors.InvalidArgument([errors.FieldViolation("end", "must be in the future")])
    _require_account(ws, cmd.account_id, scope=cmd.scope)
    key = (cmd.account_id, cmd.asset)
    catch_up(ws, *key)
    active = sum(1 for s in ws.schedules_of(key) if s.state is ScheduleState.ACTIVE)
    if active >= limits.SCHEDULES_PER_PAIR_MAX:
        raise errors.ScheduleLimitExceeded(
            f"{cmd.account_id} has {active} active schedules of {cmd.asset}, the most one"
            f" account may (SCHEDULES_PER_PAIR_MAX {limits.SCHEDULES_PER_PAIR_MAX})",
            {"limit": str(limits.SCHEDULES_PER_PAIR_MAX), "active": str(active)},
        )
    cad = schedules.Cadence(schedules.Unit(cmd.unit), cmd.count, anchor, cmd.time_zone)
    first = schedules.first_period(cad, ws.now)
    s = Schedule(
        schedule_id=ws.make_id(),
        account_id=cmd.account_id,
        asset=cmd.asset,
        amount=cmd.amount,
        unit=cmd.unit,
        count=cmd.count,
        anchor=anchor,
        time_zone=cmd.time_zone,
        ends_at=cmd.ends_at,
        priority=cmd.priority,
        category=cmd.category,
        lot_life_s=cmd.lot_life_s,
        rollover=dataclasses.replace(cmd.rollover) if cmd.rollover else None,
        first_period=first,
        next_period=first,
        next_start=anchor,
        state=ScheduleState.ACTIVE,
        metadata=dict(cmd.metadata),
        created_at=ws.now,
    )
    s.next_start = schedules.next_start(s)
    ws.add_schedule(s)
    ws.dirty_schedules.add(s.schedule_id)
    schedules.issue_due(ws, *key)
    return ScheduleResult(schedules.snapshot(s), ws.balance(*key).copy())


def update_grant_schedule(ws: WorkingSet, cmd: c.UpdateGrantSchedule) -> ScheduleResult:
    """New terms from the next period on: catch_up first issues every period up
    to now with the terms they had, so no issued period is ever rewritten (nor
    the rollover of the current one, decided by its own terms at its end).
    Errors: ScheduleNotFound (also outside the caller's scope)."""
    found = ws.schedules.get(cmd.schedule_id)
    s = schedules.require_in_scope(
        found, cmd.schedule_id, found is not None and in_scope(cmd.scope, found.account_id)
    )
    longest = schedules.longest_period_s(schedules.Unit(s.unit), s.count)
    life_max = longest * limits.SCHEDULE_LOT_LIFE_PERIODS_MAX
    if cmd.rollover is not None and (cmd.rollover.life_s or 0) > life_max:
        raise errors.InvalidArgument(
            [
                errors.FieldViolation(
                    "rollover.life", f"must be 1 s to {life_max} s for this schedule"
                )
            ]
        )
    key = (s.account_id, s.asset)
    catch_up(ws, *key)
    amount, rollover = s.terms_for(s.next_period)
    if cmd.amount is not None:
        amount = cmd.amount
    if cmd.rollover is not None:
        rollover = dataclasses.replace(cmd.rollover)
    elif cmd.remove_rollover:
        rollover = None
    s.terms = [t for t in s.terms if t.from_period < s.next_period]
    s.terms.append(Terms(s.next_period, amount, rollover))
    ws.dirty_schedules.add(s.schedule_id)
    return ScheduleResult(schedules.snapshot(s), ws.balance(*key).copy())


def cancel_grant_schedule(ws: WorkingSet, cmd: c.CancelGrantSchedule) -> ScheduleResult:
    """No period starts after now; the current period's lot stays (and no longer
    rolls over) unless `void_remainder`, which voids its unheld remainder.
    Cancelling a cancelled schedule answers it as it is.
    Errors: ScheduleNotFound (also outside the caller's scope)."""
    found = ws.schedules.get(cmd.schedule_id)
    s = schedules.require_in_scope(
        found, cmd.schedule_id, found is not None and in_scope(cmd.scope, found.account_id)
    )
    key = (s.account_id, s.asset)
    catch_up(ws, *key)  # every period up to now is issued first
    if s.state is ScheduleState.CANCELLED:
        return ScheduleResult(schedules.snapshot(s), ws.balance(*key).copy())
    s.state = ScheduleState.CANCELLED
    if s.ends_at is None or s.ends_at > ws.now:
        s.ends_at = ws.now
    s.next_start = schedules.next_start(s)
    ws.dirty_schedules.add(s.schedule_id)
    if cmd.void_remainder:
        for lot in ws.spendable_lots(key):
            if lot.schedule_id == s.schedule_id:
                ws.transfer(
                    ws.make_id(),
                    lot.asset,
                    lot.remaining,
                    available(lot.account_id),
                    VOIDED_SIDE,
                    Movement.VOID,
                    lot_id=lot.lot_id,
                )
                lot.remaining = 0
                ws.dirty_lots.add(lot.lot_id)
    return ScheduleResult(schedules.snapshot(s), ws.balance(*key).copy())


# ---------------------------------------------------------------- helpers


def _require_account(
    ws: WorkingSet, account_id: str, leg_key: str = "", scope: Scope = None
) -> None:
    """Errors: AccountNotFound, also (word for word) when the account is outside `scope`."""
    if account_id not in ws.accounts or not in_scope(scope, account_id):
        meta = {"account_id": account_id}
        if leg_key:
            meta["leg_key"] = leg_key
        raise errors.AccountNotFound(
            f"account {account_id} not found; create it with CreateAccount", meta
        )


def snapshot(res: Reservation) -> Reservation:
    """A copy for the reply: later commands of the batch may change the original.
    (The constructor with the fields as keywords, as Balance.copy: dataclasses.replace
    looks the fields up at every call, twice the time, once per spend.)"""
    return Reservation(**{**res.__dict__, "metadata": dict(res.metadata), "allocations": []})


def _result(ws: WorkingSet, res: Reservation) -> ReservationResult:
    return ReservationResult(snapshot(res), ws.balance(res.account_id, res.asset).copy())
