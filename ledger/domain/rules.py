"""The ledger rules, applied to the rows a batch has loaded (a `WorkingSet`).

Every operation checks first and mutates after, so an operation that raises
a LedgerError leaves the working set as it found it, except for expiries it
found due (an overdue reservation or lot is expired by whoever touches it
first, and that stays even when the operation itself then fails).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ledger.domain import commands as c
from ledger.domain import errors, limits
from ledger.domain.access import Scope, in_scope
from ledger.domain.model import (
    CONSUMED,
    EXPIRED,
    ISSUANCE,
    Allocation,
    Balance,
    Bucket,
    GrantResult,
    GroupResult,
    Lot,
    Movement,
    Posting,
    Reservation,
    ReservationResult,
    ReservationState,
    Result,
)

PairKey = tuple[str, str]

# Which positive posting counts a movement for the credits-moved metric, and its label.
_MOVED_LABEL = {
    (Movement.GRANT, Bucket.AVAILABLE): "granted",
    (Movement.RESERVE, Bucket.HELD): "reserved",
    (Movement.SETTLE, Bucket.SYSTEM): "settled",
    (Movement.RELEASE, Bucket.AVAILABLE): "released",
    (Movement.REFUND, Bucket.AVAILABLE): "refunded",
    (Movement.LOT_EXPIRY, Bucket.SYSTEM): "expired",
    (Movement.RESERVATION_EXPIRY, Bucket.AVAILABLE): "reservation_expired",
}


class LotsNotLoaded(Exception):
    """A command needs live lots of these pairs beyond those the batch loaded:
    the writer loads them whole and runs the batch again. Never reaches a caller."""

    def __init__(self, pairs: set[PairKey]) -> None:
        super().__init__(f"lots not loaded for {sorted(pairs)}")
        self.pairs = pairs


def new_id() -> str:
    return str(uuid.uuid4())


@dataclass
class WorkingSet:
    """The rows one batch read, and what the batch changed in them."""

    now: datetime
    refund_grace: timedelta
    accounts: set[str] = field(default_factory=set)
    balances: dict[PairKey, Balance] = field(default_factory=dict)
    lots: dict[str, Lot] = field(default_factory=dict)
    reservations: dict[str, Reservation] = field(default_factory=dict)
    make_id: Callable[[], str] = new_id
    # What changed:
    postings: list[Posting] = field(default_factory=list)
    dirty_balances: set[PairKey] = field(default_factory=set)
    dirty_lots: set[str] = field(default_factory=set)
    dirty_reservations: set[str] = field(default_factory=set)
    moved: list[tuple[str, str, int]] = field(default_factory=list)
    # Pairs whose live lots were loaded only up to a point in spend order (the
    # storage loads the first few): the spend order of the last one loaded.
    lot_horizon: dict[PairKey, tuple[int, int, float, datetime, str]] = field(default_factory=dict)
    # Live lots per pair, for the pairs a Grant touches (the LIVE_LOTS_PER_PAIR_MAX cap).
    live_lot_counts: dict[PairKey, int] = field(default_factory=dict)
    _pair_lots: dict[PairKey, dict[str, Lot]] = field(default_factory=dict)
    _pair_holds: dict[PairKey, dict[str, Reservation]] = field(default_factory=dict)
    _caught_up: dict[PairKey, datetime] = field(default_factory=dict)

    def add_lot(self, lot: Lot) -> None:
        self.lots[lot.lot_id] = lot
        self._pair_lots.setdefault((lot.account_id, lot.asset), {})[lot.lot_id] = lot

    def add_reservation(self, res: Reservation) -> None:
        self.reservations[res.reservation_id] = res
        if res.state is ReservationState.OPEN:
            key = (res.account_id, res.asset)
            self._pair_holds.setdefault(key, {})[res.reservation_id] = res

    def spendable_lots(self, key: PairKey) -> list[Lot]:
        lots = [lot for lot in self._pair_lots.get(key, {}).values() if lot.remaining > 0]
        lots.sort(key=Lot.spend_order)
        return lots

    def overdue_holds(self, key: PairKey) -> list[Reservation]:
        """Open reservations of the pair whose expiry has come, soonest first."""
        due = [r for r in self._pair_holds.get(key, {}).values() if r.overdue(self.now)]
        due.sort(key=lambda r: (r.expires_at, r.reservation_id))
        return due

    def balance(self, account_id: str, asset: str) -> Balance:
        key = (account_id, asset)
        bal = self.balances.get(key)
        if bal is None:
            bal = self.balances[key] = Balance(account_id, asset)
        return bal

    def touch_balance(self, bal: Balance) -> None:
        self.dirty_balances.add((bal.account_id, bal.asset))

    def post(
        self,
        tx: str,
        account: str,
        asset: str,
        amount: int,
        movement: Movement,
        bucket: Bucket,
        reservation_id: str = "",
        lot_id: str = "",
    ) -> None:
        self.postings.append(
            Posting(tx, account, asset, amount, movement, bucket, reservation_id, lot_id)
        )
        label = _MOVED_LABEL.get((movement, bucket))
        if label is not None and amount > 0:
            self.moved.append((asset, label, amount))


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


# ---------------------------------------------------------------- grants and lots


def grant(ws: WorkingSet, cmd: c.Grant) -> GrantResult:
    """Errors: InvalidArgument (expiry not in the future; never recorded), AccountNotFound,
    BalanceLimitExceeded."""
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
    bal = ws.balance(cmd.account_id, cmd.asset)
    if bal.available + bal.reserved + cmd.amount > limits.INT64_MAX:
        raise errors.BalanceLimitExceeded(
            f"granting {cmd.amount} would push the balance of {cmd.asset} past int64 (INT64_MAX)",
            {"limit": str(limits.INT64_MAX), "requested": str(cmd.amount)},
        )
    lot = Lot(
        ws.make_id(),
        cmd.account_id,
        cmd.asset,
        cmd.amount,
        cmd.amount,
        cmd.priority,
        cmd.source,
        cmd.expires_at,
        ws.now,
    )
    ws.add_lot(lot)
    ws.dirty_lots.add(lot.lot_id)
    tx = ws.make_id()
    ws.post(tx, ISSUANCE, cmd.asset, -cmd.amount, Movement.GRANT, Bucket.SYSTEM, lot_id=lot.lot_id)
    ws.post(
        tx,
        cmd.account_id,
        cmd.asset,
        cmd.amount,
        Movement.GRANT,
        Bucket.AVAILABLE,
        lot_id=lot.lot_id,
    )
    bal.available += cmd.amount
    bal.granted = _saturating(bal.granted + cmd.amount)
    ws.touch_balance(bal)
    return GrantResult(bal.copy(), dataclasses.replace(lot))


def catch_up(ws: WorkingSet, account_id: str, asset: str) -> None:
    """The pair as it is at `ws.now`: the only way any rule or read sees a pair.

    In this order (the sweeper's too, since it runs the same function): the
    unreserved remainder of every due lot is written off; then every overdue
    hold ends EXPIRED, its remaining credits going back to their lots, except
    the parts whose lot has expired, which are written off. Whether or not the
    sweeper has run, every reader and every rule sees the same amounts; the
    sweeper only makes them durable. Idempotent within a working set (nothing
    becomes due twice at one instant).
    """
    key = (account_id, asset)
    if ws._caught_up.get(key) == ws.now:
        return
    ws._caught_up[key] = ws.now
    for lot in ws.spendable_lots(key):
        if lot.expired_at(ws.now):
            _write_off_lot(ws, lot)
    for res in ws.overdue_holds(key):
        _release(ws, ws.make_id(), res, res.remaining, Movement.RESERVATION_EXPIRY)
        res.state = ReservationState.EXPIRED
        ws._pair_holds[key].pop(res.reservation_id, None)


def _write_off_lot(ws: WorkingSet, lot: Lot) -> None:
    amount = lot.remaining
    bal = ws.balance(lot.account_id, lot.asset)
    tx = ws.make_id()
    ws.post(
        tx,
        lot.account_id,
        lot.asset,
        -amount,
        Movement.LOT_EXPIRY,
        Bucket.AVAILABLE,
        lot_id=lot.lot_id,
    )
    ws.post(tx, EXPIRED, lot.asset, amount, Movement.LOT_EXPIRY, Bucket.SYSTEM, lot_id=lot.lot_id)
    lot.remaining = 0
    ws.dirty_lots.add(lot.lot_id)
    bal.available -= amount
    bal.expired = _saturating(bal.expired + amount)
    ws.touch_balance(bal)


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


# ---------------------------------------------------------------- holds


def _insufficient(
    account_id: str, asset: str, available: int, requested: int, leg_key: str = ""
) -> errors.InsufficientCredits:
    meta = {
        "account_id": account_id,
        "asset": asset,
        "available": str(available),
        "requested": str(requested),
    }
    where = ""
    if leg_key:
        meta["leg_key"] = leg_key
        where = f" (leg {leg_key!r})"
    return errors.InsufficientCredits(
        f"{account_id} has {available} {asset} available, {requested} requested{where}", meta
    )


def _draw(ws: WorkingSet, account_id: str, asset: str, amount: int) -> list[tuple[Lot, int]]:
    """Take `amount` from the pair's live lots in spend order: the one way credits
    leave lots. Plans first, then takes, so LotsNotLoaded leaves nothing changed."""
    key = (account_id, asset)
    horizon = ws.lot_horizon.get(key)
    plan: list[tuple[Lot, int]] = []
    left = amount
    for lot in ws.spendable_lots(key):
        if horizon is not None and lot.spend_order() > horizon:
            break  # unloaded lots may come before this one
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


def _hold(
    ws: WorkingSet,
    tx: str,
    account_id: str,
    asset: str,
    amount: int,
    ttl_s: float | None,
    metadata: dict[str, str],
    group_id: str = "",
    leg_key: str = "",
    leg_index: int = 0,
) -> Reservation:
    """Move `amount` from available to held, drawing lots in spending order. Caller checked."""
    ttl = limits.TTL_DEFAULT_S if ttl_s is None else ttl_s
    res = Reservation(
        reservation_id=ws.make_id(),
        account_id=account_id,
        asset=asset,
        amount=amount,
        settled=0,
        released=0,
        refunded=0,
        state=ReservationState.OPEN,
        created_at=ws.now,
        expires_at=ws.now + timedelta(seconds=ttl),
        metadata=dict(metadata),
        group_id=group_id,
        leg_key=leg_key,
        leg_index=leg_index,
    )
    for lot, take in _draw(ws, account_id, asset, amount):
        res.allocations.append(Allocation(lot.lot_id, take))
        ws.post(
            tx,
            account_id,
            asset,
            -take,
            Movement.RESERVE,
            Bucket.AVAILABLE,
            res.reservation_id,
            lot.lot_id,
        )
        ws.post(
            tx,
            account_id,
            asset,
            take,
            Movement.RESERVE,
            Bucket.HELD,
            res.reservation_id,
            lot.lot_id,
        )
    bal = ws.balance(account_id, asset)
    bal.available -= amount
    bal.reserved += amount
    ws.touch_balance(bal)
    ws.add_reservation(res)
    ws.dirty_reservations.add(res.reservation_id)
    return res


def reserve(ws: WorkingSet, cmd: c.Reserve) -> ReservationResult:
    """Errors: AccountNotFound, InsufficientCredits."""
    _require_account(ws, cmd.account_id, scope=cmd.scope)
    available = _available(ws, cmd.account_id, cmd.asset)
    if available < cmd.amount:
        raise _insufficient(cmd.account_id, cmd.asset, available, cmd.amount)
    res = _hold(ws, ws.make_id(), cmd.account_id, cmd.asset, cmd.amount, cmd.ttl_s, cmd.metadata)
    return _result(ws, res)


def reserve_group(ws: WorkingSet, cmd: c.ReserveGroup) -> GroupResult:
    """All legs or none. Errors: AccountNotFound, InsufficientCredits (naming the leg)."""
    needed: dict[PairKey, int] = {}
    for leg in cmd.legs:
        _require_account(ws, leg.account_id, leg.leg_key, cmd.scope)
        key = (leg.account_id, leg.asset)
        needed[key] = needed.get(key, 0) + leg.amount
        available = _available(ws, leg.account_id, leg.asset)
        if available < needed[key]:
            raise _insufficient(
                leg.account_id,
                leg.asset,
                available - (needed[key] - leg.amount),
                leg.amount,
                leg.leg_key,
            )
    group_id = ws.make_id()
    tx = ws.make_id()
    legs = [
        _hold(
            ws,
            tx,
            leg.account_id,
            leg.asset,
            leg.amount,
            cmd.ttl_s,
            cmd.metadata,
            group_id,
            leg.leg_key,
            index,
        )
        for index, leg in enumerate(cmd.legs)
    ]
    return GroupResult(group_id, [snapshot(r) for r in legs])


def charge(ws: WorkingSet, cmd: c.Charge) -> ReservationResult:
    """Reserve and settle in one step. Errors: AccountNotFound, InsufficientCredits."""
    _require_account(ws, cmd.account_id, scope=cmd.scope)
    available = _available(ws, cmd.account_id, cmd.asset)
    if available < cmd.amount:
        raise _insufficient(cmd.account_id, cmd.asset, available, cmd.amount)
    tx = ws.make_id()
    res = Reservation(
        reservation_id=ws.make_id(),
        account_id=cmd.account_id,
        asset=cmd.asset,
        amount=cmd.amount,
        settled=cmd.amount,
        released=0,
        refunded=0,
        state=ReservationState.CLOSED,
        created_at=ws.now,
        expires_at=ws.now,
        metadata=dict(cmd.metadata),
    )
    for lot, take in _draw(ws, cmd.account_id, cmd.asset, cmd.amount):
        res.allocations.append(Allocation(lot.lot_id, take, settled=take))
        # Straight from available to consumed: the hold would be undone in the same step.
        ws.post(
            tx,
            cmd.account_id,
            cmd.asset,
            -take,
            Movement.SETTLE,
            Bucket.AVAILABLE,
            res.reservation_id,
            lot.lot_id,
        )
        ws.post(
            tx,
            CONSUMED,
            cmd.asset,
            take,
            Movement.SETTLE,
            Bucket.SYSTEM,
            res.reservation_id,
            lot.lot_id,
        )
    bal = ws.balance(cmd.account_id, cmd.asset)
    bal.available -= cmd.amount
    bal.settled = _saturating(bal.settled + cmd.amount)
    ws.touch_balance(bal)
    ws.add_reservation(res)
    ws.dirty_reservations.add(res.reservation_id)
    return _result(ws, res)


# ---------------------------------------------------------------- settle, release, refund


def _open_reservation(ws: WorkingSet, reservation_id: str, scope: Scope = None) -> Reservation:
    """The reservation, expired first if overdue. Errors: ReservationNotFound, also
    when its account is outside the caller's scope (checked before any change)."""
    res = ws.reservations.get(reservation_id)
    if res is None or not in_scope(scope, res.account_id):
        raise errors.ReservationNotFound(f"reservation {reservation_id} not found")
    catch_up(ws, res.account_id, res.asset)
    return res


def _require_state_open(res: Reservation) -> None:
    if res.state is ReservationState.EXPIRED:
        raise errors.ReservationExpired(
            f"reservation {res.reservation_id} expired at {res.expires_at.isoformat()}; its hold was released",
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
    res = _open_reservation(ws, cmd.reservation_id, cmd.scope)
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
        ws.post(
            tx,
            res.account_id,
            res.asset,
            -take,
            Movement.SETTLE,
            Bucket.HELD,
            res.reservation_id,
            alloc.lot_id,
        )
        ws.post(
            tx,
            CONSUMED,
            res.asset,
            take,
            Movement.SETTLE,
            Bucket.SYSTEM,
            res.reservation_id,
            alloc.lot_id,
        )
        left -= take
    res.settled += cmd.amount
    bal = ws.balance(res.account_id, res.asset)
    bal.reserved -= cmd.amount
    bal.settled = _saturating(bal.settled + cmd.amount)
    ws.touch_balance(bal)
    if cmd.final and res.remaining:
        _release(ws, tx, res, res.remaining, Movement.RELEASE)
    if res.remaining == 0:
        res.state = ReservationState.CLOSED
    ws.dirty_reservations.add(res.reservation_id)
    return _result(ws, res)


def _lot_of(ws: WorkingSet, res: Reservation, alloc: Allocation) -> Lot:
    """The lot an allocation came from; the batch loads every one of them."""
    lot = ws.lots.get(alloc.lot_id)
    if lot is None:
        raise errors.InvariantViolation(
            f"lot {alloc.lot_id} of reservation {res.reservation_id} not loaded"
        )
    return lot


def _release(ws: WorkingSet, tx: str, res: Reservation, amount: int, movement: Movement) -> None:
    """Give `amount` of the hold back to its lots; parts of expired lots are written off."""
    bal = ws.balance(res.account_id, res.asset)
    left = amount
    for alloc in res.allocations:
        take = min(alloc.remaining, left)
        if take == 0:
            continue
        left -= take
        lot = _lot_of(ws, res, alloc)
        if lot.expired_at(ws.now):
            # Never brought back to life: the held part of an expired lot is written off.
            ws.post(
                tx,
                res.account_id,
                res.asset,
                -take,
                Movement.LOT_EXPIRY,
                Bucket.HELD,
                res.reservation_id,
                lot.lot_id,
            )
            ws.post(
                tx,
                EXPIRED,
                res.asset,
                take,
                Movement.LOT_EXPIRY,
                Bucket.SYSTEM,
                res.reservation_id,
                lot.lot_id,
            )
            alloc.expired += take
            res.expired += take
            bal.expired = _saturating(bal.expired + take)
        else:
            ws.post(
                tx,
                res.account_id,
                res.asset,
                -take,
                movement,
                Bucket.HELD,
                res.reservation_id,
                lot.lot_id,
            )
            ws.post(
                tx,
                res.account_id,
                res.asset,
                take,
                movement,
                Bucket.AVAILABLE,
                res.reservation_id,
                lot.lot_id,
            )
            alloc.released += take
            res.released += take
            lot.remaining += take
            ws.dirty_lots.add(lot.lot_id)
            bal.available += take
    if left:
        raise errors.InvariantViolation(
            f"reservation {res.reservation_id} allocations short by {left}"
        )
    bal.reserved -= amount
    ws.touch_balance(bal)
    ws.dirty_reservations.add(res.reservation_id)


def release(ws: WorkingSet, cmd: c.Release) -> ReservationResult:
    """Errors: ReservationNotFound, ReservationExpired, ReservationClosed, AmountExceedsRemaining."""
    res = _open_reservation(ws, cmd.reservation_id, cmd.scope)
    _require_state_open(res)
    amount = cmd.amount or res.remaining
    if amount > res.remaining:
        raise _exceeds_remaining(res, amount)
    _release(ws, ws.make_id(), res, amount, Movement.RELEASE)
    if res.remaining == 0:
        res.state = ReservationState.CLOSED
    return _result(ws, res)


def refund(ws: WorkingSet, cmd: c.Refund) -> ReservationResult:
    """Give settled credits back, to their lot or, if it expired, to a new lot
    that lives `refund_grace`. Works on open, closed and expired reservations.
    Errors: ReservationNotFound, AmountExceedsSettled."""
    res = _open_reservation(ws, cmd.reservation_id, cmd.scope)
    refundable = res.settled - res.refunded
    if cmd.amount > refundable:
        raise errors.AmountExceedsSettled(
            f"{cmd.amount} requested but only {refundable} of reservation {res.reservation_id} is refundable",
            {"refundable": str(refundable), "requested": str(cmd.amount)},
        )
    bal = ws.balance(res.account_id, res.asset)
    tx = ws.make_id()
    left = cmd.amount
    for alloc in res.allocations:
        take = min(alloc.settled - alloc.refunded, left)
        if take == 0:
            continue
        alloc.refunded += take
        left -= take
        lot = _lot_of(ws, res, alloc)
        if lot.expired_at(ws.now):
            lot = Lot(
                ws.make_id(),
                res.account_id,
                res.asset,
                take,
                take,
                lot.priority,
                "refund",
                ws.now + ws.refund_grace,
                ws.now,
            )
            ws.add_lot(lot)
        else:
            lot.remaining += take
        ws.dirty_lots.add(lot.lot_id)
        ws.post(
            tx,
            CONSUMED,
            res.asset,
            -take,
            Movement.REFUND,
            Bucket.SYSTEM,
            res.reservation_id,
            lot.lot_id,
        )
        ws.post(
            tx,
            res.account_id,
            res.asset,
            take,
            Movement.REFUND,
            Bucket.AVAILABLE,
            res.reservation_id,
            lot.lot_id,
        )
    if left:
        raise errors.InvariantViolation(
            f"reservation {res.reservation_id} settled allocations short by {left}"
        )
    res.refunded += cmd.amount
    bal.available += cmd.amount
    bal.refunded = _saturating(bal.refunded + cmd.amount)
    ws.touch_balance(bal)
    ws.dirty_reservations.add(res.reservation_id)
    return _result(ws, res)


def expire_due(ws: WorkingSet, cmd: c.ExpireDue) -> None:
    """The sweeper's work: expire what is overdue among the given ids (others are no-ops)."""
    for reservation_id in cmd.reservation_ids:
        if reservation_id in ws.reservations:
            _open_reservation(ws, reservation_id)
    for account_id, asset in cmd.lot_pairs:
        catch_up(ws, account_id, asset)


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


def _saturating(total: int) -> int:
    """Lifetime totals (granted, settled, refunded, expired) are statistics: they
    stop at INT64_MAX instead of ever stopping an account (the journal has the
    exact history)."""
    return min(total, limits.INT64_MAX)


def snapshot(res: Reservation) -> Reservation:
    """A copy for the reply: later commands of the batch may change the original."""
    return dataclasses.replace(res, metadata=dict(res.metadata), allocations=[])


def _result(ws: WorkingSet, res: Reservation) -> ReservationResult:
    return ReservationResult(snapshot(res), ws.balance(res.account_id, res.asset).copy())
