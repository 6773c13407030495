"""Plain, typed values the client returns instead of protobuf messages.

Amounts are Python ints (int64 on the wire), times are aware UTC datetimes,
enums are Python enums. Results of mutating calls carry `replayed`: True when
the server answered from its idempotency record instead of doing the work again.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Protocol, TypeVar

from creditledger.v1 import ledger_pb2 as pb
from google.protobuf import duration_pb2, timestamp_pb2


class ReservationState(enum.Enum):
    """State of a reservation (Reservation.State on the wire)."""

    UNSPECIFIED = 0
    OPEN = 1
    CLOSED = 2
    EXPIRED = 3


class Movement(enum.Enum):
    """Kind of movement of a journal entry (Entry.Movement on the wire)."""

    UNSPECIFIED = 0
    GRANT = 1
    RESERVE = 2
    SETTLE = 3
    RELEASE = 4
    REFUND = 5
    RESERVATION_EXPIRY = 6
    LOT_EXPIRY = 7
    DEBT = 8
    DEBT_REPAYMENT = 9
    VOID = 10
    ROLLOVER = 11


class Overage(enum.Enum):
    """What a Reserve or Charge does past what can be spent (OverageMode on the wire)."""

    REJECT = 1  # all or nothing, never below zero (the default)
    CAP = 2  # take what there is, up to the amount; `taken` says how much (0 too)
    DEBT = 3  # all or nothing, down to the pair's floor


class Operator(enum.Enum):
    """How a Comparison compares the pair's value with its own (Comparison.Operator on the wire)."""

    GT = 1
    GE = 2
    EQ = 3
    LE = 4
    LT = 5


class CapWindow(enum.Enum):
    """The window of a member's spending cap (CapWindow on the wire)."""

    UNSPECIFIED = 0
    DAY = 1  # the UTC day
    MONTH = 2  # the UTC calendar month
    LIFETIME = 3


class PeriodUnit(enum.Enum):
    """How long a grant schedule's period is (GrantSchedule.PeriodUnit on the wire)."""

    UNSPECIFIED = 0
    MONTH = 1  # period_count calendar months, on the anchor's day clamped to the month's end
    WEEK = 2  # period_count weeks of local wall-clock time
    DAY = 3  # period_count days of local wall-clock time
    FIXED = 4  # period_count seconds, whatever the time zone


class ScheduleState(enum.Enum):
    """State of a grant schedule (GrantSchedule.State on the wire)."""

    UNSPECIFIED = 0
    ACTIVE = 1
    CANCELLED = 2


class AlertState(enum.Enum):
    """Where a balance is against its alert's levels (BalanceAlert.State on the wire)."""

    UNSPECIFIED = 0
    ABOVE = 1
    BELOW = 2
    EXHAUSTED = 3


class BalanceEventKind(enum.Enum):
    """What an alert crossing was (BalanceEvent.Kind on the wire)."""

    UNSPECIFIED = 0
    BALANCE_BELOW = 1
    BALANCE_RECOVERED = 2
    BALANCE_EXHAUSTED = 3


class Bucket(enum.Enum):
    """Which part of an account an entry moves (Entry.Bucket on the wire)."""

    UNSPECIFIED = 0
    AVAILABLE = 1
    HELD = 2
    SYSTEM = 3


@dataclass(frozen=True, slots=True)
class Balance:
    """One asset of one account."""

    account_id: str
    asset: str
    available: int
    reserved: int
    granted: int
    settled: int
    refunded: int
    expired: int
    #: One more for every change of the pair; a Precondition may name it.
    version: int = 0
    #: How far below zero a DEBT-mode spend may go (<= 0).
    floor: int = 0
    #: Credits spent that no grant backed yet.
    debt: int = 0
    #: What a DEBT-mode spend may take: available - debt - floor.
    spendable: int = 0
    #: The account's caps per UTC day, calendar month and lifetime; None: no cap.
    cap_day: int | None = None
    cap_month: int | None = None
    cap_lifetime: int | None = None


@dataclass(frozen=True, slots=True)
class Lot:
    """The remainder of one grant."""

    lot_id: str
    source: str
    priority: int
    amount: int
    remaining: int
    expires_at: datetime | None
    created_at: datetime | None
    # Provenance: paid, promotional, allowance, rollover, refund or an "x_" token.
    category: str = "paid"
    # Cost basis per credit in micros of cost_currency; None when not given.
    unit_cost_micros: int | None = None
    cost_currency: str = ""
    # The grant schedule and period that issued the lot ("" and None for a Grant's).
    schedule_id: str = ""
    period: int | None = None


@dataclass(frozen=True, slots=True)
class Reservation:
    """A hold of credits; `remaining` = amount - settled - released - expired
    (`expired`: held credits written off because their lot expired)."""

    reservation_id: str
    account_id: str
    asset: str
    amount: int
    settled: int
    released: int
    refunded: int
    remaining: int
    state: ReservationState
    created_at: datetime | None
    expires_at: datetime | None
    metadata: Mapping[str, str]
    group_id: str
    leg_key: str
    expired: int = 0
    #: The member whose spend this is, when the hold is on its pool's pair ("" otherwise).
    member_id: str = ""


@dataclass(frozen=True, slots=True)
class ReservationGroup:
    """Reservations made all or nothing, in the order they were requested."""

    group_id: str
    reservations: tuple[Reservation, ...]


@dataclass(frozen=True, slots=True)
class Account:
    """An account with one balance per asset it has ever held."""

    account_id: str
    metadata: Mapping[str, str]
    created_at: datetime | None
    balances: tuple[Balance, ...]
    #: The pool the account spends from when it has no lots of its own ("" for none).
    parent_id: str = ""


@dataclass(frozen=True, slots=True)
class Entry:
    """One immutable journal line; `amount` is signed."""

    entry_id: str
    transaction_id: str
    account_id: str
    asset: str
    amount: int
    movement: Movement
    bucket: Bucket
    reservation_id: str
    lot_id: str
    created_at: datetime | None


@dataclass(frozen=True, slots=True)
class GrantResult:
    """Outcome of Grant."""

    balance: Balance
    lot: Lot
    replayed: bool


@dataclass(frozen=True, slots=True)
class ReservationResult:
    """Outcome of Reserve, Settle, Release, Refund and Charge."""

    reservation: Reservation
    balance: Balance
    replayed: bool
    #: Reserve and Charge: the credits taken (with Overage.CAP maybe less than
    #: asked, 0 too); 0 for Settle, Release and Refund.
    taken: int = 0


@dataclass(frozen=True, slots=True)
class ReserveGroupResult:
    """Outcome of ReserveGroup."""

    group: ReservationGroup
    replayed: bool
    #: The balance after it of every pair the legs hold on.
    balances: tuple[Balance, ...] = ()


@dataclass(frozen=True, slots=True)
class BalanceView:
    """Outcome of GetBalance."""

    balance: Balance
    expiring_amount: int
    lots: tuple[Lot, ...]
    #: The pool whose lots a spend of this account would take ("" : its own).
    funded_by: str = ""
    #: What a REJECT-mode spend may take now, its pool and caps counted.
    may_spend: int = 0
    #: The account's caps with their use and the next reset.
    caps: tuple[CapView, ...] = ()


@dataclass(frozen=True, slots=True)
class CapView:
    """One spending cap of an account, as GetBalance shows it."""

    window: CapWindow
    cap: int
    used: int
    remaining: int
    #: When the window's use starts again from 0 (None for LIFETIME).
    resets_at: datetime | None


@dataclass(frozen=True, slots=True)
class Comparison:
    """`<the pair's value> operator value`, for a Precondition."""

    operator: Operator
    value: int


@dataclass(frozen=True, slots=True)
class Precondition:
    """What a mutation expects of a pair, checked as the mutation runs.

    When it does not hold the call raises PreconditionFailed and changes
    nothing (the key's first outcome, replayed). Empty `account_id` and
    `asset`: the pair the mutation touches (Settle, Release and Refund must
    leave them empty). Set at least one of `version`, `available`, `held`.
    """

    version: int | None = None
    available: Comparison | None = None
    held: Comparison | None = None
    account_id: str = ""
    asset: str = ""


@dataclass(frozen=True, slots=True)
class BalanceResult:
    """Outcome of SetSpendingLimits and SetMemberCap: the pair with its settings and version."""

    balance: Balance
    replayed: bool


@dataclass(frozen=True, slots=True)
class VoidResult:
    """Outcome of VoidGrant."""

    lot: Lot
    balance: Balance
    #: Credits taken back by this call.
    voided: int
    replayed: bool


@dataclass(frozen=True, slots=True)
class Rollover:
    """What rolls over at a period's end: the unused remainder of that period's lot,
    up to `cap_amount` and `cap_percent` (both None: all of it)."""

    cap_amount: int | None = None
    cap_percent: int | None = None
    #: How long the rollover lot lives from the period's end; None: to the next period's end.
    life: timedelta | None = None
    #: The rollover lot's priority; None: 100.
    priority: int | None = None


@dataclass(frozen=True, slots=True)
class GrantSchedule:
    """A grant that renews itself every period."""

    schedule_id: str
    account_id: str
    asset: str
    amount: int
    period_unit: PeriodUnit
    period_count: int
    anchor: datetime | None
    time_zone: str
    end: datetime | None
    priority: int
    category: str
    lot_life: timedelta | None
    rollover: Rollover | None
    #: The first period not yet issued (every earlier one is, exactly once).
    next_period: int
    next_period_start: datetime | None
    state: ScheduleState
    metadata: Mapping[str, str]
    created_at: datetime | None
    first_period: int
    #: The period from which amount and rollover apply.
    terms_from_period: int


@dataclass(frozen=True, slots=True)
class ScheduleResult:
    """Outcome of CreateGrantSchedule, UpdateGrantSchedule and CancelGrantSchedule;
    `balance` is None for UpdateGrantSchedule (it changes no balance)."""

    schedule: GrantSchedule
    balance: Balance | None
    replayed: bool


@dataclass(frozen=True, slots=True)
class SchedulePage:
    """One page of ListGrantSchedules, oldest first; `next_page_token` is "" on the last page."""

    schedules: tuple[GrantSchedule, ...]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class BreakageLine:
    """Credits written off at expiry of one category and cost basis."""

    category: str
    cost_currency: str
    unit_cost_micros: int | None
    credits: int
    #: credits x unit_cost_micros (saturating at 2^63-1); 0 without a cost basis.
    cost_micros: int


@dataclass(frozen=True, slots=True)
class Breakage:
    """Outcome of GetBreakage: write-offs by expiry in the window."""

    lines: tuple[BreakageLine, ...]
    credits: int


@dataclass(frozen=True, slots=True)
class StatementMovement:
    """The change one movement made over a statement's period."""

    movement: Movement
    amount: int
    available_change: int
    reserved_change: int
    entry_count: int


@dataclass(frozen=True, slots=True)
class Statement:
    """One page of GetStatement: opening + every movement's changes = closing."""

    opening: Balance
    movements: tuple[StatementMovement, ...]
    closing: Balance
    #: The period's entries, in the order they took effect (this page).
    entries: tuple[Entry, ...]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class BalanceAlert:
    """A low-balance alert on one account x asset."""

    account_id: str
    asset: str
    threshold: int
    recovery: int
    percent: bool
    state: AlertState
    #: threshold and recovery as amounts now (with percent: of the last Grant).
    threshold_amount: int
    recovery_amount: int
    created_at: datetime | None


@dataclass(frozen=True, slots=True)
class BalanceEvent:
    """A balance crossing an alert's levels, in the transaction that crossed."""

    kind: BalanceEventKind
    account_id: str
    asset: str
    available: int
    threshold_amount: int
    recovery_amount: int


@dataclass(frozen=True, slots=True)
class StreamedTransaction:
    """One ledger transaction from WatchTransactions.

    `position` orders the stream ("<xid>-<entry_id>", so text order is stream
    order): delivery is at least once, so deduplicate by it, and resume after
    it (`after_position`).
    """

    position: str
    transaction_id: str
    movement: Movement
    reservation_id: str
    caller: str
    idempotency_key: str
    commit_time: datetime | None
    entries: tuple[Entry, ...]
    balances: tuple[Balance, ...]
    events: tuple[BalanceEvent, ...]


@dataclass(frozen=True, slots=True)
class EntryPage:
    """One page of ListEntries; `next_page_token` is "" on the last page."""

    entries: tuple[Entry, ...]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class ReservationPage:
    """One page of ListReservations, oldest first; `next_page_token` is "" on the last page."""

    reservations: tuple[Reservation, ...]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class GroupLeg:
    """One leg of a ReserveGroup request."""

    account_id: str
    asset: str
    amount: int
    leg_key: str


_E = TypeVar(
    "_E",
    ReservationState,
    Movement,
    Bucket,
    CapWindow,
    PeriodUnit,
    ScheduleState,
    AlertState,
    BalanceEventKind,
)


def _enum(cls: type[_E], value: int) -> _E:
    """A wire enum value; one this client does not know yet reads as UNSPECIFIED."""
    try:
        return cls(value)
    except ValueError:
        return cls.UNSPECIFIED


def _time(ts: timestamp_pb2.Timestamp, present: bool) -> datetime | None:
    return ts.ToDatetime(tzinfo=UTC) if present else None


def balance_from_pb(m: pb.Balance) -> Balance:
    """Converts a wire Balance."""
    return Balance(
        account_id=m.account_id,
        asset=m.asset,
        available=m.available,
        reserved=m.reserved,
        granted=m.granted,
        settled=m.settled,
        refunded=m.refunded,
        expired=m.expired,
        version=m.version,
        floor=m.floor,
        debt=m.debt,
        spendable=m.spendable,
        cap_day=m.cap_day if m.HasField("cap_day") else None,
        cap_month=m.cap_month if m.HasField("cap_month") else None,
        cap_lifetime=m.cap_lifetime if m.HasField("cap_lifetime") else None,
    )


def lot_from_pb(m: pb.Lot) -> Lot:
    """Converts a wire Lot."""
    return Lot(
        lot_id=m.lot_id,
        source=m.source,
        priority=m.priority,
        amount=m.amount,
        remaining=m.remaining,
        expires_at=_time(m.expires_at, m.HasField("expires_at")),
        created_at=_time(m.created_at, m.HasField("created_at")),
        category=m.category or "paid",
        unit_cost_micros=m.unit_cost_micros if m.HasField("unit_cost_micros") else None,
        cost_currency=m.cost_currency,
        schedule_id=m.schedule_id,
        period=m.period if m.HasField("period") else None,
    )


def reservation_from_pb(m: pb.Reservation) -> Reservation:
    """Converts a wire Reservation."""
    return Reservation(
        reservation_id=m.reservation_id,
        account_id=m.account_id,
        asset=m.asset,
        amount=m.amount,
        settled=m.settled,
        released=m.released,
        refunded=m.refunded,
        remaining=m.remaining,
        state=_enum(ReservationState, m.state),
        created_at=_time(m.created_at, m.HasField("created_at")),
        expires_at=_time(m.expires_at, m.HasField("expires_at")),
        metadata=MappingProxyType(dict(m.metadata)),
        group_id=m.group_id,
        leg_key=m.leg_key,
        expired=m.expired,
        member_id=m.member_id,
    )


def group_from_pb(m: pb.ReservationGroup) -> ReservationGroup:
    """Converts a wire ReservationGroup."""
    return ReservationGroup(m.group_id, tuple(reservation_from_pb(r) for r in m.reservations))


def account_from_pb(m: pb.Account) -> Account:
    """Converts a wire Account."""
    return Account(
        account_id=m.account_id,
        metadata=MappingProxyType(dict(m.metadata)),
        created_at=_time(m.created_at, m.HasField("created_at")),
        balances=tuple(balance_from_pb(b) for b in m.balances),
        parent_id=m.parent_id,
    )


def entry_from_pb(m: pb.Entry) -> Entry:
    """Converts a wire Entry."""
    return Entry(
        entry_id=m.entry_id,
        transaction_id=m.transaction_id,
        account_id=m.account_id,
        asset=m.asset,
        amount=m.amount,
        movement=_enum(Movement, m.movement),
        bucket=_enum(Bucket, m.bucket),
        reservation_id=m.reservation_id,
        lot_id=m.lot_id,
        created_at=_time(m.created_at, m.HasField("created_at")),
    )


class ReservationResponse(Protocol):
    """Any of ReserveResponse, SettleResponse, ReleaseResponse, RefundResponse, ChargeResponse."""

    @property
    def reservation(self) -> pb.Reservation: ...

    @property
    def balance(self) -> pb.Balance: ...


def reservation_result(resp: ReservationResponse, replayed: bool) -> ReservationResult:
    """Converts a response that carries a reservation and a balance."""
    taken = resp.taken if isinstance(resp, pb.ReserveResponse | pb.ChargeResponse) else 0
    return ReservationResult(
        reservation_from_pb(resp.reservation), balance_from_pb(resp.balance), replayed, taken
    )


def _duration(d: duration_pb2.Duration, present: bool) -> timedelta | None:
    return d.ToTimedelta() if present else None


def balance_view_from_pb(m: pb.GetBalanceResponse) -> BalanceView:
    """Converts a GetBalance response."""
    return BalanceView(
        balance_from_pb(m.balance),
        m.expiring_amount,
        tuple(lot_from_pb(lot) for lot in m.lots),
        funded_by=m.funded_by,
        may_spend=m.may_spend,
        caps=tuple(
            CapView(
                window=_enum(CapWindow, c.window),
                cap=c.cap,
                used=c.used,
                remaining=c.remaining,
                resets_at=_time(c.resets_at, c.HasField("resets_at")),
            )
            for c in m.caps
        ),
    )


def rollover_from_pb(m: pb.Rollover) -> Rollover:
    """Converts a wire Rollover."""
    return Rollover(
        cap_amount=m.cap_amount if m.HasField("cap_amount") else None,
        cap_percent=m.cap_percent if m.HasField("cap_percent") else None,
        life=_duration(m.life, m.HasField("life")),
        priority=m.priority if m.HasField("priority") else None,
    )


def schedule_from_pb(m: pb.GrantSchedule) -> GrantSchedule:
    """Converts a wire GrantSchedule."""
    return GrantSchedule(
        schedule_id=m.schedule_id,
        account_id=m.account_id,
        asset=m.asset,
        amount=m.amount,
        period_unit=_enum(PeriodUnit, m.period_unit),
        period_count=m.period_count,
        anchor=_time(m.anchor, m.HasField("anchor")),
        time_zone=m.time_zone,
        end=_time(m.end, m.HasField("end")),
        priority=m.priority,
        category=m.category,
        lot_life=_duration(m.lot_life, m.HasField("lot_life")),
        rollover=rollover_from_pb(m.rollover) if m.HasField("rollover") else None,
        next_period=m.next_period,
        next_period_start=_time(m.next_period_start, m.HasField("next_period_start")),
        state=_enum(ScheduleState, m.state),
        metadata=MappingProxyType(dict(m.metadata)),
        created_at=_time(m.created_at, m.HasField("created_at")),
        first_period=m.first_period,
        terms_from_period=m.terms_from_period,
    )


def breakage_from_pb(m: pb.GetBreakageResponse) -> Breakage:
    """Converts a GetBreakage response."""
    return Breakage(
        tuple(
            BreakageLine(
                category=line.category,
                cost_currency=line.cost_currency,
                unit_cost_micros=(
                    line.unit_cost_micros if line.HasField("unit_cost_micros") else None
                ),
                credits=line.credits,
                cost_micros=line.cost_micros,
            )
            for line in m.lines
        ),
        m.credits,
    )


def statement_from_pb(m: pb.GetStatementResponse) -> Statement:
    """Converts a GetStatement response."""
    return Statement(
        opening=balance_from_pb(m.opening),
        movements=tuple(
            StatementMovement(
                movement=_enum(Movement, line.movement),
                amount=line.amount,
                available_change=line.available_change,
                reserved_change=line.reserved_change,
                entry_count=line.entry_count,
            )
            for line in m.movements
        ),
        closing=balance_from_pb(m.closing),
        entries=tuple(entry_from_pb(e) for e in m.entries),
        next_page_token=m.next_page_token,
    )


def alert_from_pb(m: pb.BalanceAlert) -> BalanceAlert:
    """Converts a wire BalanceAlert."""
    return BalanceAlert(
        account_id=m.account_id,
        asset=m.asset,
        threshold=m.threshold,
        recovery=m.recovery,
        percent=m.percent,
        state=_enum(AlertState, m.state),
        threshold_amount=m.threshold_amount,
        recovery_amount=m.recovery_amount,
        created_at=_time(m.created_at, m.HasField("created_at")),
    )


def streamed_transaction_from_pb(m: pb.StreamedTransaction) -> StreamedTransaction:
    """Converts one transaction of a WatchTransactions message."""
    return StreamedTransaction(
        position=m.position,
        transaction_id=m.transaction_id,
        movement=_enum(Movement, m.movement),
        reservation_id=m.reservation_id,
        caller=m.caller,
        idempotency_key=m.idempotency_key,
        commit_time=_time(m.commit_time, m.HasField("commit_time")),
        entries=tuple(entry_from_pb(e) for e in m.entries),
        balances=tuple(balance_from_pb(b) for b in m.balances),
        events=tuple(
            BalanceEvent(
                kind=_enum(BalanceEventKind, e.kind),
                account_id=e.account_id,
                asset=e.asset,
                available=e.available,
                threshold_amount=e.threshold_amount,
                recovery_amount=e.recovery_amount,
            )
            for e in m.events
        ),
    )
