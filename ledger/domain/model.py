"""Value types of the ledger: balances, lots, reservations, entries, results.

Amounts are ints in the asset's smallest unit. Times are timezone-aware UTC
datetimes. These types are what the service returns and what idempotency
records replay; they know nothing of protobuf or SQL.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, TypeVar

from ledger.domain.errors import LedgerError

_T = TypeVar("_T")


def built(cls: type[_T], **fields: Any) -> _T:
    """An instance of the frozen dataclass `cls` from ALL its fields, without its
    __init__, which sets each field through object.__setattr__ (about 4x the
    cost): the change stream builds an Entry and a JournalRow for every row it
    reads (ledger.storage.journal.row). Equal to `cls(**fields)`, and as frozen;
    tests/unit/test_journal_rows.py checks that every field is given."""
    obj = object.__new__(cls)
    obj.__dict__.update(fields)
    return obj


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
    # Credits lent to an account by a DEBT-mode spend (@overdraft -> available, a lot of
    # its own), and paid back from a later grant (available -> @overdraft).
    DEBT = "debt"
    DEBT_REPAYMENT = "debt_repayment"
    VOID = "void"
    ROLLOVER = "rollover"  # a period's unused allowance moved to its rollover lot


class Bucket(enum.Enum):
    AVAILABLE = "available"
    HELD = "held"
    SYSTEM = "system"


# System accounts: no balance row, their totals are derived from entries.
ISSUANCE = "@issuance"
CONSUMED = "@consumed"
EXPIRED = "@expired"
OVERDRAFT = "@overdraft"


class Overage(enum.Enum):
    """What a Reserve or Charge does when the amount is more than the pair can spend."""

    REJECT = "reject"  # all or nothing (INSUFFICIENT_CREDITS)
    CAP = "cap"  # take what can be spent, up to the amount (0 is an answer)
    DEBT = "debt"  # spend below zero, down to the pair's floor


VOIDED = "@voided"  # credits taken back by VoidGrant
ROLLED = "@rollover"  # between a period's lot and its rollover lot (sums to zero)


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
    # One more for every change of the pair: each command that changes it, and
    # each deadline rules.catch_up applies to it (docs/design.md, "Versions").
    version: int = 0
    # Spending limits (SetSpendingLimits): how far below zero the pair may go in
    # DEBT mode (<= 0), and what it owes (credits spent that no grant backed).
    floor: int = 0
    debt: int = 0
    # Member caps (None: none) and their counters (docs/design.md, "Shared pools").
    cap_day: int | None = None
    cap_month: int | None = None
    cap_lifetime: int | None = None
    cap_held: int = 0  # held now by this account's spends, wherever their credits are
    spent_day: int = 0  # settled by this account's spends on day_start (UTC)
    day_start: str | None = None  # ISO date
    spent_month: int = 0
    month_start: str | None = None  # ISO date of the month's first day
    spent_total: int = 0

    def copy(self) -> Balance:
        return Balance(**self.__dict__)

    @property
    def spendable(self) -> int:
        """What a REJECT- or CAP-mode spend may take: what lots hold, less the debt."""
        return self.available - self.debt

    @property
    def spendable_in_debt(self) -> int:
        """What a DEBT-mode spend may take: down to the floor (held credits count)."""
        return self.available - self.debt - self.floor


# Where a lot's credits came from (its provenance). A caller may also use its
# own token: "x_" then 1-30 chars of [a-z0-9_] (commands.CATEGORY_CUSTOM).
PAID = "paid"
PROMOTIONAL = "promotional"
ALLOWANCE = "allowance"
ROLLOVER = "rollover"
REFUND = "refund"
CATEGORIES = (PAID, PROMOTIONAL, ALLOWANCE, ROLLOVER, REFUND)
# At equal priority and expiry, the lot spent first: promotional before
# allowance before paid (docs/design.md, "Spend order"). Caller tokens rank
# just before paid. Stored with each lot (lots.spend_rank) so that the index
# lots_spend_order orders by it exactly as spend_order() does.
_SPEND_RANK = {PROMOTIONAL: 0, ROLLOVER: 1, ALLOWANCE: 2, REFUND: 3, PAID: 5}
CUSTOM_SPEND_RANK = 4


# Stands for "no expiry" in spend_order(), after `never` already put such lots last.
_NEVER = datetime.min.replace(tzinfo=UTC)


def spend_rank(category: str) -> int:
    return _SPEND_RANK.get(category, CUSTOM_SPEND_RANK)


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
    # Provenance and cost basis (migration 0013): lots made before it are "paid".
    category: str = PAID
    # Cost basis of one credit in micros of `cost_currency`; None: not given.
    unit_cost_micros: int | None = None
    cost_currency: str = ""
    # A lot a grant schedule issued (migration 0014): its schedule and period;
    # (schedule_id, period, category) is unique: allowance once, rollover once.
    schedule_id: str = ""
    period: int | None = None

    def expired_at(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def spend_order(self) -> tuple[int, int, datetime, int, datetime, str]:
        """Priority, then soonest expiry (never-expiring last), then the category's
        rank (promotional, rollover, allowance, refund, caller tokens, paid), then
        oldest. The SQL of the batch load orders by the same columns (index
        lots_spend_order, migration 0013): tests/integration/test_spend_order.py."""
        never = 1 if self.expires_at is None else 0
        # The datetime itself, not a float: PostgreSQL compares microseconds exactly.
        expiry = self.expires_at if self.expires_at is not None else _NEVER
        return (
            self.priority,
            never,
            expiry,
            spend_rank(self.category),
            self.created_at,
            self.lot_id,
        )


@dataclass
class Allocation:
    """The part of a reservation that came from one lot."""

    lot_id: str
    drawn: int  # taken from the lot when the reservation was made (not the current hold)
    settled: int = 0
    released: int = 0  # given back to the lot
    refunded: int = 0
    expired: int = 0  # held, then written off because the lot expired
    # The lot's account when it is not the reservation's (a spend split over a
    # member's own lots and its pools'); empty: the reservation's account_id.
    account_id: str = ""

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
    # The account that spent, when an ancestor's lots fund the hold (account_id is
    # then the farthest ancestor whose lots fund it); empty for an account's own
    # spends. A spend may be split: the member's own lots first, then its pools'
    # (each allocation names its lot's account: Allocation.account_id).
    member_id: str = ""

    @property
    def spender(self) -> str:
        return self.member_id or self.account_id

    def account_of(self, alloc: Allocation) -> str:
        """The account whose lot the allocation holds (and whose balance it moves)."""
        return alloc.account_id or self.account_id

    def held_on(self) -> set[str]:
        """Every account whose lots fund the reservation."""
        return {self.account_id, *(a.account_id for a in self.allocations if a.account_id)}

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
    parent_id: str = ""


class CapWindow(enum.Enum):
    DAY = "day"
    MONTH = "month"
    LIFETIME = "lifetime"


@dataclass(frozen=True)
class CapView:
    """One cap of a member as a read shows it."""

    window: CapWindow
    cap: int
    used: int  # settled in the window + held now
    remaining: int
    resets_at: datetime | None  # None: lifetime


# ---- results of commands (what a reply carries, and what a replay returns) ----


@dataclass(frozen=True)
class GrantResult:
    balance: Balance
    lot: Lot


@dataclass
class Rollover:
    """At a period's end, its lot's unused remainder, up to the cap (the smaller
    of cap_amount and cap_percent of the period's amount when both are set),
    moves to a rollover lot; the rest expires."""

    cap_amount: int | None = None
    cap_percent: int | None = None
    life_s: int | None = None  # None: until the end of the next period
    priority: int = 100


@dataclass
class Terms:
    """UpdateGrantSchedule's change: from period `from_period` on, this amount and rollover."""

    from_period: int
    amount: int
    rollover: Rollover | None


class ScheduleState(enum.Enum):
    ACTIVE = "active"
    CANCELLED = "cancelled"


@dataclass
class Schedule:
    """A grant that renews itself: period n's lot, keyed (schedule_id, n), is
    issued by rules.catch_up as at the period's start (ledger/domain/schedules.py)."""

    schedule_id: str
    account_id: str
    asset: str
    amount: int
    unit: str  # periods.Unit value
    count: int
    anchor: datetime
    time_zone: str
    ends_at: datetime | None
    priority: int
    category: str
    lot_life_s: int | None  # None: each lot lives to its period's end
    rollover: Rollover | None
    first_period: int  # the period the schedule was created in (none before)
    next_period: int  # every period before it is issued
    next_start: datetime  # when next_period starts (the sweeper's index)
    state: ScheduleState
    metadata: dict[str, str]
    created_at: datetime
    # Changes by UpdateGrantSchedule, oldest first; `amount` and `rollover` above
    # are the terms from first_period until the first of them.
    terms: list[Terms] = field(default_factory=list)

    def terms_for(self, period: int) -> tuple[int, Rollover | None]:
        """The amount and rollover of period `period`."""
        amount, rollover = self.amount, self.rollover
        for t in self.terms:
            if t.from_period <= period:
                amount, rollover = t.amount, t.rollover
        return amount, rollover


@dataclass(frozen=True)
class ScheduleResult:
    schedule: Schedule
    balance: Balance | None = None


@dataclass(frozen=True)
class BreakageLine:
    """Credits written off at their lot's expiry (breakage), by the lot's
    category and cost basis: cost_micros = credits x unit_cost_micros."""

    category: str
    cost_currency: str
    unit_cost_micros: int | None
    credits: int

    @property
    def cost_micros(self) -> int:
        return self.credits * (self.unit_cost_micros or 0)


@dataclass(frozen=True)
class VoidResult:
    """VoidGrant's answer: the lot and balance after it, and how much it voided."""

    balance: Balance
    lot: Lot
    voided: int


@dataclass(frozen=True)
class ReservationResult:
    reservation: Reservation
    balance: Balance


@dataclass(frozen=True)
class LimitsResult:
    """SetSpendingLimits' answer: the pair with its limits and version."""

    balance: Balance


@dataclass(frozen=True)
class GroupResult:
    group_id: str
    reservations: list[Reservation]
    # Each pair the group held on, after the holds (with its version), by pair.
    balances: tuple[Balance, ...] = ()


@dataclass(frozen=True)
class BalanceView:
    balance: Balance
    expiring_amount: int
    lots: list[Lot]
    # Shared pools: the pair spends draw from, what the account may spend now
    # (the lesser of that pair's and its caps' room), and its caps.
    funded_by: str = ""
    may_spend: int = 0
    caps: tuple[CapView, ...] = ()


@dataclass(frozen=True)
class EntriesPage:
    entries: list[Entry]
    next_page_token: str


@dataclass(frozen=True)
class BatchResult:
    """SubmitBatch's answer: per command, in the request's order, its result or
    its error, and whether that outcome is a replay of the key's first."""

    outcomes: tuple[tuple[GrantResult | ReservationResult | LedgerError, bool], ...]


Result = (
    GrantResult
    | ReservationResult
    | GroupResult
    | BatchResult
    | LimitsResult
    | VoidResult
    | ScheduleResult
    | None
)


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
    TOP_UP_REQUESTED = "top_up_requested"


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
    # The top-up rule (docs/design.md, "Top-up requests"): on each BALANCE_BELOW,
    # request top_up_target - available - pending, within top_up_cap_month per
    # calendar month (UTC; 0: no cap). top_up_target 0: no rule.
    top_up_target: int = 0
    top_up_cap_month: int = 0
    # Requests awaiting the Grant that settles them: request id -> amount.
    top_up_pending: dict[str, int] = field(default_factory=dict)
    # The month top_up_requested_month counts (its first day), and the total.
    top_up_month: date | None = None
    top_up_requested_month: int = 0

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
    # TOP_UP_REQUESTED: the request's id (the Grant that settles it names it) and amount.
    request_id: str = ""
    amount: int = 0
