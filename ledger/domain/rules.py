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
from ledger.domain import errors, limits
from ledger.domain.access import Scope, in_scope
from ledger.domain.model import (
    Allocation,
    GrantResult,
    GroupResult,
    Lot,
    Movement,
    Reservation,
    ReservationResult,
    ReservationState,
    Result,
)
from ledger.domain.workingset import (
    CONSUMED_SIDE,
    EXPIRED_SIDE,
    ISSUED,
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
    journal's effective_at: GetBalance as_of sees it at that instant)."""
    key = (account_id, asset)
    for res in ws.overdue_holds(key):
        ws.effective_at = res.expires_at
        _give_back(
            ws, ws.make_id(), res, res.remaining, Movement.RESERVATION_EXPIRY, res.expires_at
        )
        ws.end_hold(res, ReservationState.EXPIRED)
    for lot in ws.spendable_lots(key):
        if lot.expired_at(ws.now):
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
    lives `refund_grace` with the old one's priority."""
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
    for alloc in res.allocations:
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
