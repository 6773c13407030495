"""Plain, typed values the client returns instead of protobuf messages.

Amounts are Python ints (int64 on the wire), times are aware UTC datetimes,
enums are Python enums. Results of mutating calls carry `replayed`: True when
the server answered from its idempotency record instead of doing the work again.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Protocol, TypeVar

from creditledger.v1 import ledger_pb2 as pb
from google.protobuf import timestamp_pb2


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


class Overage(enum.Enum):
    """What a Reserve or Charge does past what can be spent (OverageMode on the wire)."""

    REJECT = 1  # all or nothing, never below zero (the default)
    CAP = 2  # take what there is, up to the amount; `taken` says how much (0 too)
    DEBT = 3  # all or nothing, down to the pair's floor


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


@dataclass(frozen=True, slots=True)
class ReserveGroupResult:
    """Outcome of ReserveGroup."""

    group: ReservationGroup
    replayed: bool


@dataclass(frozen=True, slots=True)
class BalanceView:
    """Outcome of GetBalance."""

    balance: Balance
    expiring_amount: int
    lots: tuple[Lot, ...]


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


_E = TypeVar("_E", ReservationState, Movement, Bucket)


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
    return ReservationResult(
        reservation_from_pb(resp.reservation), balance_from_pb(resp.balance), replayed
    )
