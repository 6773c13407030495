"""The rows one batch (or one read) loaded, and the one way to move credits in them.

A movement of credits is a `transfer` between two sides, each an (account,
bucket): it writes the two postings that balance by construction and derives
every balance field from them, exactly as `ledger verify` derives them from
the entries (ledger/storage/verify.py, check `balances_match_entries`). The
rules never add to a balance by hand.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from ledger.domain import alerts, limits
from ledger.domain.model import (
    CONSUMED,
    EXPIRED,
    ISSUANCE,
    OVERDRAFT,
    VOIDED,
    AlertEvent,
    AlertEventKind,
    Balance,
    BalanceAlert,
    Bucket,
    Lot,
    Movement,
    Posting,
    Reservation,
    ReservationState,
    Schedule,
)

PairKey = tuple[str, str]
SpendOrder = tuple[int, int, datetime, int, datetime, str]


class Side(NamedTuple):
    """One side of a transfer: an account and the bucket the credits leave or enter."""

    account_id: str
    bucket: Bucket


def available(account_id: str) -> Side:
    return Side(account_id, Bucket.AVAILABLE)


def held(account_id: str) -> Side:
    return Side(account_id, Bucket.HELD)


ISSUED = Side(ISSUANCE, Bucket.SYSTEM)
CONSUMED_SIDE = Side(CONSUMED, Bucket.SYSTEM)
EXPIRED_SIDE = Side(EXPIRED, Bucket.SYSTEM)
OVERDRAFT_SIDE = Side(OVERDRAFT, Bucket.SYSTEM)
VOIDED_SIDE = Side(VOIDED, Bucket.SYSTEM)

# Which entering side counts a movement for the credits-moved metric, and its label.
_MOVED_LABEL = {
    (Movement.GRANT, Bucket.AVAILABLE): "granted",
    (Movement.RESERVE, Bucket.HELD): "reserved",
    (Movement.SETTLE, Bucket.SYSTEM): "settled",
    (Movement.RELEASE, Bucket.AVAILABLE): "released",
    (Movement.REFUND, Bucket.AVAILABLE): "refunded",
    (Movement.LOT_EXPIRY, Bucket.SYSTEM): "expired",
    (Movement.RESERVATION_EXPIRY, Bucket.AVAILABLE): "reservation_expired",
    (Movement.VOID, Bucket.SYSTEM): "voided",
    (Movement.ROLLOVER, Bucket.AVAILABLE): "rolled_over",
}


class LotsNotLoaded(Exception):
    """A command needs live lots of these pairs beyond those the batch loaded:
    the writer loads them whole and runs the batch again. Never reaches a caller."""

    def __init__(self, pairs: set[PairKey]) -> None:
        super().__init__(f"lots not loaded for {sorted(pairs)}")
        self.pairs = pairs


class ScheduleBehind(Exception):
    """A schedule of these pairs has more periods due than one batch issues
    (WorkingSet.periods_max): the writer makes them durable in batches of their
    own, then runs the batch again. Never reaches a caller."""

    def __init__(self, pairs: set[PairKey]) -> None:
        super().__init__(f"schedules behind for {sorted(pairs)}")
        self.pairs = pairs


def new_id() -> str:
    """A random (version 4) UUID, as str(uuid.uuid4()) writes it.

    Built from os.urandom directly: a charge draws two ids, and uuid4() plus
    str() cost ~9 us each here (a UUID object, an int, then the format), about
    a fifth of the rules' time for a charge (docs/performance.md, round five)."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def saturating(total: int) -> int:
    """Lifetime totals (granted, settled, refunded, expired) are statistics: they
    stop at INT64_MAX instead of ever stopping an account (the journal has the
    exact history; verify compares them the same way)."""
    return min(total, limits.INT64_MAX)


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
    # Pairs whose live lots were loaded only up to a point in spend order (the
    # storage loads the first few): the spend order of the last one loaded.
    lot_horizon: dict[PairKey, SpendOrder] = field(default_factory=dict)
    # What changed (balances are derived from the postings, in transfer()):
    postings: list[Posting] = field(default_factory=list)
    dirty_balances: set[PairKey] = field(default_factory=set)
    dirty_lots: set[str] = field(default_factory=set)
    dirty_reservations: set[str] = field(default_factory=set)
    moved: list[tuple[str, str, int]] = field(default_factory=list)
    _pair_lots: dict[PairKey, dict[str, Lot]] = field(default_factory=dict)
    _pair_holds: dict[PairKey, dict[str, Reservation]] = field(default_factory=dict)
    caught_up: dict[PairKey, datetime] = field(default_factory=dict)
    # Limits set by this batch: (account, asset, kind, value, transaction); kind is
    # "floor" or "cap_<window>", a None value removes a cap.
    limit_changes: list[tuple[str, str, str, int | None, str]] = field(default_factory=list)
    # Each loaded account's ancestors, nearest first (shared pools).
    ancestors: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Pairs changed since the last end_change(): one change, one version.
    changing: set[PairKey] = field(default_factory=set)

    def end_change(self) -> None:
        """Close one change: each pair it moved gets the next version. Called after
        each command and after each deadline catch_up applies, so the version counts
        changes, not postings, and is the same whoever applied a deadline first."""
        for key in self.changing:
            self.balances[key].version += 1
        self.changing.clear()

    # Grant schedules of the loaded pairs (ledger/domain/schedules.py).
    schedules: dict[str, Schedule] = field(default_factory=dict)
    dirty_schedules: set[str] = field(default_factory=set)
    # Periods one catch_up may issue per schedule (None: no bound, for reads);
    # past it, ScheduleBehind (the writer issues the backlog in batches first).
    periods_max: int | None = None
    # The writer's backlog batches: stop at periods_max instead of raising.
    periods_partial: bool = False
    behind: bool = False  # set when such a batch stopped at periods_max

    _pair_schedules: dict[PairKey, dict[str, Schedule]] = field(default_factory=dict)

    def add_schedule(self, schedule: Schedule) -> None:
        self.schedules[schedule.schedule_id] = schedule
        pair = (schedule.account_id, schedule.asset)
        self._pair_schedules.setdefault(pair, {})[schedule.schedule_id] = schedule

    def schedules_of(self, key: PairKey) -> list[Schedule]:
        """The pair's schedules loaded, in id order (the order catch_up issues in)."""
        found = self._pair_schedules.get(key)
        if not found:
            return []
        return [found[i] for i in sorted(found)]

    # Who the postings being written are for (the command's caller and
    # idempotency key; empty while catch_up applies deadlines), and the instant
    # a deadline being applied took effect: stamped on each posting.
    origin: tuple[str, str] = ("", "")
    effective_at: datetime | None = None
    # Low-balance alerts of the loaded pairs, and the crossings this batch made.
    alerts: dict[PairKey, BalanceAlert] = field(default_factory=dict)
    dirty_alerts: set[PairKey] = field(default_factory=set)
    events: list[AlertEvent] = field(default_factory=list)
    # The ledger transaction being written, and the alerted pairs it changed:
    # an alert compares each transaction's result, never a posting half-way
    # through one (a Charge over three lots is one change of available).
    _tx: str = ""
    _touched: dict[PairKey, int] = field(default_factory=dict)

    def add_lot(self, lot: Lot) -> None:
        self.lots[lot.lot_id] = lot
        self._pair_lots.setdefault((lot.account_id, lot.asset), {})[lot.lot_id] = lot

    def add_reservation(self, res: Reservation) -> None:
        """Add a reservation; an open one is a hold of every pair whose lots fund
        it (a split spend: the member's and its pools'), so that catching up any
        of them expires it (once: end_hold takes it off all of them)."""
        self.reservations[res.reservation_id] = res
        if res.state is ReservationState.OPEN:
            for account_id in res.held_on():
                key = (account_id, res.asset)
                self._pair_holds.setdefault(key, {})[res.reservation_id] = res

    def end_hold(self, res: Reservation, state: ReservationState) -> None:
        res.state = state
        for account_id in res.held_on():
            self._pair_holds.get((account_id, res.asset), {}).pop(res.reservation_id, None)
        self.dirty_reservations.add(res.reservation_id)

    def spendable_lots(self, key: PairKey) -> list[Lot]:
        lots = [lot for lot in self._pair_lots.get(key, {}).values() if lot.remaining > 0]
        lots.sort(key=Lot.spend_order)
        return lots

    def overdue_holds(self, key: PairKey) -> list[Reservation]:
        """Open reservations of the pair whose expiry has come, soonest first."""
        due = [r for r in self._pair_holds.get(key, {}).values() if r.overdue(self.now)]
        due.sort(key=lambda r: (r.expires_at, r.reservation_id))
        return due

    def held_from(self, lot: Lot) -> int:
        """What open reservations of the lot's pair still hold of it (the batch
        loads every open reservation of a pair it voids from)."""
        holds = self._pair_holds.get((lot.account_id, lot.asset), {}).values()
        return sum(a.remaining for r in holds for a in r.allocations if a.lot_id == lot.lot_id)

    def balance(self, account_id: str, asset: str) -> Balance:
        key = (account_id, asset)
        bal = self.balances.get(key)
        if bal is None:
            bal = self.balances[key] = Balance(account_id, asset)
        return bal

    def transfer(
        self,
        tx: str,
        asset: str,
        amount: int,
        source: Side,
        destination: Side,
        movement: Movement,
        reservation_id: str = "",
        lot_id: str = "",
    ) -> None:
        """Move `amount` (> 0) from `source` to `destination`: two postings that sum
        to zero, and the customer balances they imply."""
        if amount <= 0:
            raise ValueError(f"a transfer moves a positive amount, not {amount}")
        caller, key = self.origin
        if self.alerts and tx != self._tx:
            self.close_transaction()  # before this transaction changes anything
            self._tx = tx
        for side, signed in ((source, -amount), (destination, amount)):
            after = None
            if side.bucket is not Bucket.SYSTEM:
                after = self._apply(side, asset, signed, movement)
                if self.alerts and side.bucket is Bucket.AVAILABLE:
                    self._watch((side.account_id, asset), movement, signed)
            self.postings.append(
                Posting(
                    tx,
                    side.account_id,
                    asset,
                    signed,
                    movement,
                    side.bucket,
                    reservation_id,
                    lot_id,
                    caller,
                    key,
                    self.effective_at,
                    after,
                )
            )
        label = _MOVED_LABEL.get((movement, destination.bucket))
        if label is not None:
            self.moved.append((asset, label, amount))

    def repay_debt(self, tx: str, lot: Lot) -> int:
        """Credits newly issued to a pair in debt pay the debt back first, out of
        the new `lot`, as entries of their own movement (DEBT_REPAYMENT, in the
        issuing transaction `tx`) that the statement shows: a Grant's and a
        schedule period's alike (docs/design.md, "Spending limits"). Returns
        what was paid."""
        bal = self.balance(lot.account_id, lot.asset)
        paid = min(lot.remaining, bal.debt)
        if paid <= 0:
            return 0
        self.transfer(
            tx,
            lot.asset,
            paid,
            available(lot.account_id),
            OVERDRAFT_SIDE,
            Movement.DEBT_REPAYMENT,
            lot_id=lot.lot_id,
        )
        lot.remaining -= paid
        self.dirty_lots.add(lot.lot_id)
        return paid

    def _watch(self, key: PairKey, movement: Movement, signed: int) -> None:
        """Note a change of an alerted pair's available; compared when its transaction ends."""
        alert = self.alerts.get(key)
        if alert is None:
            return
        if movement is Movement.GRANT:
            alert.basis = signed  # percentages follow the last grant
        self._touched[key] = 1
        self.dirty_alerts.add(key)

    def mark_saved(self) -> None:
        """What changed so far is written (a transaction written in parts): the
        next save writes only what changes after this."""
        self.postings.clear()
        self.dirty_balances.clear()
        self.dirty_lots.clear()
        self.dirty_reservations.clear()
        self.dirty_schedules.clear()
        self.limit_changes.clear()
        self.dirty_alerts.clear()
        self.events.clear()

    def close_transaction(self) -> None:
        """The transaction being written is complete: its alerted pairs against their
        levels (each crossing an event of that transaction). The writer calls it
        before saving; a new transaction calls it for the one before."""
        for key in self._touched:
            alert = self.alerts[key]
            available_now = self.balances[key].available
            below, recovered = alert.levels()
            for kind in alerts.cross(alert, available_now):
                self.events.append(
                    AlertEvent(self._tx, *key, kind, available_now, below, recovered)
                )
                if kind is AlertEventKind.BALANCE_BELOW:
                    self._request_top_up(key, alert, available_now, below, recovered)
        self._touched.clear()

    def _request_top_up(
        self, key: PairKey, alert: BalanceAlert, available_now: int, below: int, recovered: int
    ) -> None:
        """The top-up rule of an alert that just fell below: one request per crossing,
        made here, by the one writer, in the transaction that crossed."""
        if alert.top_up_target <= 0:
            return
        request_id = self.make_id()
        amount = alerts.request_top_up(alert, available_now, self.now, request_id)
        if amount > 0:
            self.events.append(
                AlertEvent(
                    self._tx,
                    *key,
                    AlertEventKind.TOP_UP_REQUESTED,
                    available_now,
                    below,
                    recovered,
                    request_id,
                    amount,
                )
            )

    def settle_top_up(self, key: PairKey, request_id: str) -> bool:
        """A Grant pays for a pending top-up request: it stops being pending (its
        amount no longer counts against new requests). False: not pending here."""
        alert = self.alerts.get(key)
        if alert is None or request_id not in alert.top_up_pending:
            return False
        del alert.top_up_pending[request_id]
        self.dirty_alerts.add(key)
        return True

    def _apply(
        self, side: Side, asset: str, signed: int, movement: Movement
    ) -> tuple[int, int, int, int, int, int]:
        """A customer posting's effect on its balance: what verify computes from
        entries. Returns the balance after it (the journal row keeps it)."""
        bal = self.balance(side.account_id, asset)
        if side.bucket is Bucket.AVAILABLE:
            bal.available += signed
        else:
            bal.reserved += signed
        if movement is Movement.GRANT:
            bal.granted = saturating(bal.granted + signed)
        elif movement is Movement.SETTLE:
            bal.settled = saturating(bal.settled - signed)
        elif movement is Movement.REFUND:
            bal.refunded = saturating(bal.refunded + signed)
        elif movement is Movement.LOT_EXPIRY:
            bal.expired = saturating(bal.expired - signed)
        elif movement is Movement.DEBT or movement is Movement.DEBT_REPAYMENT:
            bal.debt += signed  # lent into available (+), paid back out of it (-)
        self.dirty_balances.add((side.account_id, asset))
        self.changing.add((side.account_id, asset))
        return (bal.available, bal.reserved, bal.granted, bal.settled, bal.refunded, bal.expired)
