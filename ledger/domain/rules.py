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
from datetime import datetime, timedelta

from ledger.domain import commands as c
from ledger.domain import errors, limits, schedules
from ledger.domain.access import Scope, in_scope
from ledger.domain.model import (
    REFUND,
    Allocation,
    GrantResult,
    GroupResult,
    Lot,
    Movement,
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
    """Apply one validated command. Raises a recordable LedgerError on a business failure."""
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
    schedules.issue_due(ws, account_id, asset)
    for res in ws.overdue_holds(key):
        _give_back(
            ws, ws.make_id(), res, res.remaining, Movement.RESERVATION_EXPIRY, res.expires_at
        )
        ws.end_hold(res, ReservationState.EXPIRED)
    due = [lot for lot in ws.spendable_lots(key) if lot.expired_at(ws.now)]
    while due:
        lot = due.pop(0)
        rolled = schedules.roll_over(ws, lot)  # a schedule's allowance: first its rollover
        if rolled is not None and rolled.expired_at(ws.now):
            due.append(rolled)
        if lot.remaining == 0:
            continue
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
    LotLimitExceeded, BalanceLimitExceeded."""
    if cmd.expires_at is not None and cmd.expires_at <= ws.now:
        raise errors.InvalidArgument([errors.FieldViolation("expires_at", "must be in the future")])
    _require_account(ws, cmd.account_id, scope=cmd.scope)
    key = (cmd.account_id, cmd.asset)
    catch_up(ws, *key)
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
    ws.transfer(
        ws.make_id(),
        cmd.asset,
        cmd.amount,
        ISSUED,
        available(cmd.account_id),
        Movement.GRANT,
        lot_id=lot.lot_id,
    )
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


def _hold(ws: WorkingSet, tx: str, res: Reservation) -> Reservation:
    """Move the reservation's amount from available to held, lot by lot. Caller checked."""
    for lot, take in _draw(ws, res.account_id, res.asset, res.amount):
        res.allocations.append(Allocation(lot.lot_id, take))
        ws.transfer(
            tx,
            res.asset,
            take,
            available(res.account_id),
            held(res.account_id),
            Movement.RESERVE,
            res.reservation_id,
            lot.lot_id,
        )
    ws.add_reservation(res)
    ws.dirty_reservations.add(res.reservation_id)
    return res


def _ttl(ttl_s: float | None) -> timedelta:
    return timedelta(seconds=limits.TTL_DEFAULT_S if ttl_s is None else ttl_s)


def reserve(ws: WorkingSet, cmd: c.Reserve) -> ReservationResult:
    """Errors: AccountNotFound, InsufficientCredits."""
    _require_account(ws, cmd.account_id, scope=cmd.scope)
    available_now = _available(ws, cmd.account_id, cmd.asset)
    if available_now < cmd.amount:
        raise _insufficient(cmd.account_id, cmd.asset, available_now, cmd.amount)
    res = _new_reservation(ws, cmd.account_id, cmd.asset, cmd.amount)
    res.expires_at = ws.now + _ttl(cmd.ttl_s)
    res.metadata = dict(cmd.metadata)
    return _result(ws, _hold(ws, ws.make_id(), res))


def reserve_group(ws: WorkingSet, cmd: c.ReserveGroup) -> GroupResult:
    """All legs or none. Errors: AccountNotFound, InsufficientCredits (naming the leg)."""
    needed: dict[PairKey, int] = {}
    for leg in cmd.legs:
        _require_account(ws, leg.account_id, leg.leg_key, cmd.scope)
        key = (leg.account_id, leg.asset)
        needed[key] = needed.get(key, 0) + leg.amount
        available_now = _available(ws, leg.account_id, leg.asset)
        if available_now < needed[key]:
            raise _insufficient(
                leg.account_id,
                leg.asset,
                available_now - (needed[key] - leg.amount),
                leg.amount,
                leg.leg_key,
            )
    group_id = ws.make_id()
    tx = ws.make_id()
    legs = []
    for index, leg in enumerate(cmd.legs):
        res = _new_reservation(ws, leg.account_id, leg.asset, leg.amount)
        res.expires_at = ws.now + _ttl(cmd.ttl_s)
        # The group's metadata is stored once, on its first leg (issue 15: copied
        # onto 100 legs it multiplied what a caller could store); replies show
        # it on every leg (ledger.service.groups).
        res.metadata = dict(cmd.metadata) if index == 0 else {}
        res.group_id, res.leg_key, res.leg_index = group_id, leg.leg_key, index
        legs.append(_hold(ws, tx, res))
    return GroupResult(group_id, [snapshot(r) for r in legs])


def charge(ws: WorkingSet, cmd: c.Charge) -> ReservationResult:
    """Reserve and settle in one step. Errors: AccountNotFound, InsufficientCredits."""
    _require_account(ws, cmd.account_id, scope=cmd.scope)
    available_now = _available(ws, cmd.account_id, cmd.asset)
    if available_now < cmd.amount:
        raise _insufficient(cmd.account_id, cmd.asset, available_now, cmd.amount)
    tx = ws.make_id()
    res = _new_reservation(ws, cmd.account_id, cmd.asset, cmd.amount)
    res.metadata = dict(cmd.metadata)
    for lot, take in _draw(ws, cmd.account_id, cmd.asset, cmd.amount):
        res.allocations.append(Allocation(lot.lot_id, take, settled=take))
        # Straight from available to consumed: the hold would be undone in the same step.
        ws.transfer(
            tx,
            cmd.asset,
            take,
            available(cmd.account_id),
            CONSUMED_SIDE,
            Movement.SETTLE,
            res.reservation_id,
            lot.lot_id,
        )
    res.settled = cmd.amount
    ws.add_reservation(res)
    ws.end_hold(res, ReservationState.CLOSED)
    return _result(ws, res)


# ---------------------------------------------------------------- settle, release, refund


def _reservation_now(ws: WorkingSet, reservation_id: str, scope: Scope = None) -> Reservation:
    """The reservation as it is at `ws.now` (any state: its pair caught up first).
    Errors: ReservationNotFound, also when its account is outside the caller's
    scope (checked before any change)."""
    res = ws.reservations.get(reservation_id)
    if res is None or not in_scope(scope, res.account_id):
        raise errors.ReservationNotFound(f"reservation {reservation_id} not found")
    catch_up(ws, res.account_id, res.asset)
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
            held(res.account_id),
            CONSUMED_SIDE,
            Movement.SETTLE,
            res.reservation_id,
            alloc.lot_id,
        )
    _moved_all(res, "settled", left)
    res.settled += cmd.amount
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
        if lot.expired_at(at):
            # Never brought back to life: the held part of an expired lot is written off.
            ws.transfer(
                tx,
                res.asset,
                take,
                held(res.account_id),
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
                held(res.account_id),
                available(res.account_id),
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


def release(ws: WorkingSet, cmd: c.Release) -> ReservationResult:
    """Errors: ReservationNotFound, ReservationExpired, ReservationClosed, AmountExceedsRemaining."""
    res = _reservation_now(ws, cmd.reservation_id, cmd.scope)
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
            account_id=res.account_id,
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
        lot = _refund_lot(ws, res, alloc, take)
        ws.transfer(
            tx,
            res.asset,
            take,
            CONSUMED_SIDE,
            available(res.account_id),
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
    """A copy for the reply: later commands of the batch may change the original."""
    return dataclasses.replace(res, metadata=dict(res.metadata), allocations=[])


def _result(ws: WorkingSet, res: Reservation) -> ReservationResult:
    return ReservationResult(snapshot(res), ws.balance(res.account_id, res.asset).copy())
