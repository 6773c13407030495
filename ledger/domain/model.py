"""Value types of the ledger: balances, lots, reservations, entries, results.

Amounts are ints in the asset's smallest unit. Times are timezone-aware UTC
datetimes. These types are what the service returns and what idempotency
records replay; they know nothing of protobuf or SQL.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from ledger.domain.errors import LedgerError


class ReservationState(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"
    EXPIRED = "expired"


class Movement(enum.Enum):
    GRANT = "grant"
    RESERVE = "reserve"
    SETTLE = "settle"
    RELEASE = "release"
    REFUND = "refund"
    RESERVATION_EXPIRY = "reservation_expiry"
    LOT_EXPIRY = "lot_expiry"


class Bucket(enum.Enum):
    AVAILABLE = "available"
    HELD = "held"
    SYSTEM = "system"


# System accounts: no balance row, their totals are derived from entries.
ISSUANCE = "@issuance"
CONSUMED = "@consumed"
EXPIRED = "@expired"


@dataclass
class Balance:
    """Materialized balance of one (account, asset); equals what entries imply."""

    account_id: str
    asset: str
    available: int = 0
    reserved: int = 0
    granted: int = 0
    settled: int = 0
    refunded: int = 0
    expired: int = 0

    def copy(self) -> Balance:
        return Balance(**self.__dict__)


@dataclass
class Lot:
    """What is left of one grant. remaining = unreserved, unspent, unexpired part."""

    lot_id: str
    account_id: str
    asset: str
    amount: int
    remaining: int
    priority: int
    source: str
    expires_at: datetime | None
    created_at: datetime

    def expired_at(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def spend_order(self) -> tuple[int, int, float, datetime, str]:
        """Priority, then soonest expiry (never-expiring last), then oldest."""
        never = 1 if self.expires_at is None else 0
        expiry = self.expires_at.timestamp() if self.expires_at is not None else 0.0
        return (self.priority, never, expiry, self.created_at, self.lot_id)


@dataclass
class Allocation:
    """The part of a reservation that came from one lot."""

    lot_id: str
    drawn: int  # taken from the lot when the reservation was made (not the current hold)
    settled: int = 0
    released: int = 0  # given back to the lot
    refunded: int = 0
    expired: int = 0  # held, then written off because the lot expired

    @property
    def remaining(self) -> int:
        return self.drawn - self.settled - self.released - self.expired


@dataclass
class Reservation:
    reservation_id: str
    account_id: str
    asset: str
    amount: int
    settled: int
    released: int
    refunded: int
    state: ReservationState
    created_at: datetime
    expires_at: datetime
    metadata: dict[str, str]
    group_id: str = ""
    leg_key: str = ""
    allocations: list[Allocation] = field(default_factory=list)
    # Held credits written off because their lot expired (not back to available).
    expired: int = 0
    # The leg's place in its ReserveGroup request (0 outside a group).
    leg_index: int = 0

    @property
    def remaining(self) -> int:
        return self.amount - self.settled - self.released - self.expired

    def overdue(self, now: datetime) -> bool:
        return self.state is ReservationState.OPEN and self.expires_at <= now


@dataclass(frozen=True)
class Posting:
    """One entry as the rules produce it; storage gives it an id and a time."""

    transaction_id: str
    account_id: str
    asset: str
    amount: int
    movement: Movement
    bucket: Bucket
    reservation_id: str = ""
    lot_id: str = ""
    # The command that wrote it (empty for what time did: catch_up's expiries).
    caller: str = ""
    idempotency_key: str = ""
    # For catch_up's expiries, the deadline they took effect at (before the
    # batch's instant when nothing touched the pair in between).
    effective_at: datetime | None = None
    # The balance of (account_id, asset) right after this posting (customer
    # accounts only): available, reserved, granted, settled, refunded, expired.
    after: tuple[int, int, int, int, int, int] | None = None


@dataclass(frozen=True)
class Entry:
    entry_id: int
    transaction_id: str
    account_id: str
    asset: str
    amount: int
    movement: Movement
    bucket: Bucket
    reservation_id: str
    lot_id: str
    created_at: datetime


@dataclass(frozen=True)
class Account:
    account_id: str
    metadata: dict[str, str]
    created_at: datetime
    balances: list[Balance]


# ---- results of commands (what a reply carries, and what a replay returns) ----


@dataclass(frozen=True)
class GrantResult:
    balance: Balance
    lot: Lot


@dataclass(frozen=True)
class ReservationResult:
    reservation: Reservation
    balance: Balance


@dataclass(frozen=True)
class GroupResult:
    group_id: str
    reservations: list[Reservation]


@dataclass(frozen=True)
class BalanceView:
    balance: Balance
    expiring_amount: int
    lots: list[Lot]


@dataclass(frozen=True)
class EntriesPage:
    entries: list[Entry]
    next_page_token: str


@dataclass(frozen=True)
class BatchResult:
    """SubmitBatch's answer: per command, in the request's order, its result or
    its error, and whether that outcome is a replay of the key's first."""

    outcomes: tuple[tuple[GrantResult | ReservationResult | LedgerError, bool], ...]


Result = GrantResult | ReservationResult | GroupResult | BatchResult | None


@dataclass(frozen=True)
class JournalRow:
    """One journal row as the change stream reads it: the entry, its place in the
    stream's order (the writing transaction's id, then the entry id), who wrote
    it and the balance of its account x asset right after it."""

    xid: int
    entry: Entry
    caller: str
    idempotency_key: str
    effective_at: datetime | None
    after: Balance | None


@dataclass(frozen=True)
class StreamTransaction:
    """One committed ledger transaction as WatchTransactions sends it: its rows
    (those the stream's filter and scope let through), and the balance after it
    of every account x asset among them."""

    position: tuple[int, int]
    transaction_id: str
    caller: str
    idempotency_key: str
    created_at: datetime
    entries: list[Entry]
    balances: list[Balance]
    events: list[AlertEvent] = field(default_factory=list)


class AlertState(enum.Enum):
    ABOVE = "above"
    BELOW = "below"
    EXHAUSTED = "exhausted"


class AlertEventKind(enum.Enum):
    BALANCE_BELOW = "balance_below"
    BALANCE_RECOVERED = "balance_recovered"
    BALANCE_EXHAUSTED = "balance_exhausted"


@dataclass
class BalanceAlert:
    """A low-balance alert on one account x asset (docs/design.md, "Balance alerts").
    With `percent`, threshold and recovery are percentages of `basis`, the
    amount of the pair's last Grant."""

    account_id: str
    asset: str
    threshold: int
    recovery: int
    percent: bool
    basis: int
    state: AlertState
    created_at: datetime

    def levels(self) -> tuple[int, int]:
        """(below, recovered): the available amounts the alert compares with."""
        if self.percent:
            return self.basis * self.threshold // 100, self.basis * self.recovery // 100
        return self.threshold, self.recovery


@dataclass(frozen=True)
class AlertEvent:
    """One crossing, recorded with the transaction that crossed."""

    transaction_id: str
    account_id: str
    asset: str
    kind: AlertEventKind
    available: int
    threshold: int
    recovery: int
