"""What the service needs from storage. ledger/storage implements it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from ledger.domain import commands as c
from ledger.domain.model import (
    Account,
    AlertEvent,
    BalanceAlert,
    BreakageLine,
    Entry,
    JournalRow,
    Reservation,
    ReservationState,
    Result,
    Schedule,
)
from ledger.domain.rules import PairKey, WorkingSet


class SerializationConflict(Exception):
    """The transaction lost a serialization race; retrying it may succeed.

    The Store re-runs its own units of work (everything but `batch()`) a bounded
    number of times and raises this only when every attempt lost; `attempts`
    says how many it made."""

    attempts: int = 1


class StorageUnavailable(Exception):
    """The database could not be reached or the connection broke.

    The outcome of a write is then unknown: a COMMIT cut off mid-way (a failover
    while it waited for the synchronous standby, the command timeout) can have
    committed. Callers get UNAVAILABLE and retry with the same idempotency key,
    which replays the first outcome if there was one.
    """


class WriterFenced(Exception):
    """The batch's writer term is no longer the current one: another process is
    the writer now, and nothing of the batch was committed."""


@dataclass(frozen=True)
class IdempotencyRecord:
    caller: str
    key: str
    method: str
    request_hash: bytes
    outcome: dict[str, Any]
    # When the key may be used for a new request (set by the writer when it
    # records a key; ledger.service.retention). Read back too: it is made from
    # the recording transaction's instant, so it tells which attempt wrote it.
    expires_at: datetime | None = None


class JournalFilter(NamedTuple):
    """Which journal rows a stream sees ('' and None: any): an account, an
    account-id prefix, an asset, and the caller's scope (account-id prefixes)."""

    account_id: str
    account_prefix: str
    asset: str
    scope: tuple[str, ...] | None


class BatchUnit(Protocol):
    """One SERIALIZABLE transaction. Committed when the `batch()` block exits cleanly."""

    async def load(
        self,
        ws: WorkingSet,
        keys: list[tuple[str, str]],
        reservation_ids: set[str],
        pairs: set[PairKey],
        account_ids: set[str],
        whole_pairs: set[PairKey],
        lot_ids: frozenset[str] = frozenset(),
        schedule_ids: frozenset[str] = frozenset(),
    ) -> dict[tuple[str, str], IdempotencyRecord]:
        """Load the rows into `ws`: what rules.catch_up needs for every pair (with
        the pairs of the reservations), the lots the reservations name, every live
        lot of `whole_pairs` and the first few in spend order of the others (setting
        `ws.lot_horizon` where more exist); the lots `lot_ids` (VoidGrant), with
        their pairs and every open reservation of those pairs; the active grant
        schedules of every pair, the schedules `schedule_ids` (and their pairs)
        with their live lots; return the idempotency records of `keys`."""
        ...

    async def save(self, ws: WorkingSet, records: list[IdempotencyRecord]) -> None:
        """Write what `ws` changed since its last save (then marks it saved:
        WorkingSet.mark_saved) and the idempotency `records`."""
        ...

    async def save_ahead(
        self, ws: WorkingSet, records: list[IdempotencyRecord]
    ) -> asyncio.Future[None]:
        """As save(), returning once the write is under way: the future of its
        end. `ws` may change meanwhile; nothing else may run on this unit until
        the future is done."""
        ...


class Store(Protocol):
    # False while the last health check failed: callers then fail fast.
    reachable: bool

    def batch(
        self, more_waiting: Callable[[], bool] | None = None
    ) -> AbstractAsyncContextManager[BatchUnit]:
        """One transaction; `more_waiting()`, asked at commit, says whether
        another batch will follow at once (the store may then begin it early)."""
        ...

    async def close(self) -> None: ...

    async def create_account(
        self, account_id: str, metadata: dict[str, str], now: datetime, parent_id: str = ""
    ) -> Account | None:
        """None when the id is taken. Errors: AccountNotFound (the parent),
        PoolDepthExceeded."""
        ...

    async def get_account(self, account_id: str) -> Account | None: ...

    async def snapshot(
        self,
        ws: WorkingSet,
        *,
        pairs: set[PairKey] | None = None,
        account_id: str = "",
        reservation_ids: set[str] | None = None,
        group_id: str = "",
        whole_pairs: set[PairKey] | None = None,
        schedule_ids: set[str] | None = None,
    ) -> None:
        """Read into `ws`, in one consistent snapshot, what rules.catch_up needs to
        see these pairs at `ws.now` (as a batch's load does, read-only);
        `schedule_ids` adds those grant schedules and their pairs."""
        ...

    async def list_entries(
        self, account_id: str, asset: str, before_entry_id: int | None, limit: int
    ) -> list[Entry] | None: ...

    async def breakage(
        self, ws: WorkingSet, pair: PairKey, start: datetime, end: datetime
    ) -> list[BreakageLine] | None:
        """In one snapshot: what rules.catch_up needs of `pair` (into `ws`) and the
        write-offs already written of the pair's lots expiring in [start, end),
        by category and cost basis; None when the account does not exist."""
        ...

    async def list_schedules(
        self, account_id: str, after: tuple[datetime, str] | None, limit: int
    ) -> list[Schedule] | None:
        """The account's grant schedules by (created_at, schedule_id), after the
        cursor; None when the account does not exist."""
        ...

    async def list_reservations(
        self,
        account_id: str,
        asset: str,
        state: ReservationState | None,
        after: tuple[datetime, str] | None,
        limit: int,
        now: datetime,
    ) -> list[Reservation] | None:
        """An account's reservations by (created_at, reservation_id), after `after`; the
        state as read at `now` (open past expiry is EXPIRED). None: no such account."""
        ...

    async def journal_page(
        self, after: tuple[int, int], filters: JournalFilter, limit: int
    ) -> tuple[list[JournalRow], int, dict[tuple[int, str], list[AlertEvent]]]:
        """Journal rows after the position `after` whose writing transaction is
        below the horizon (the oldest transaction still running), in stream
        order, at most about `limit` (a transaction is never cut), and the
        horizon, read in one snapshot; and the alert events (within the
        filters) of those rows' transactions, by (xid, transaction id)."""
        ...

    async def journal_snapshot(self) -> tuple[int, int, list[int]]:
        """A snapshot now: (xmin, xmax, the transaction ids in progress)."""
        ...

    async def journal_horizon(self) -> int:
        """The horizon now: every transaction that can still commit is at or above it."""
        ...

    async def balance_as_of(
        self, account_id: str, asset: str, position: tuple[int, int] | None, at: datetime | None
    ) -> tuple[bool, JournalRow | None, datetime | None, list[JournalRow]]:
        """(account exists, the pair's last row at or before the position or the
        instant, the instant of the pair's first batch after `at`, that batch's
        catch-up rows whose deadline is at or before `at`)."""
        ...

    async def statement(
        self,
        account_id: str,
        asset: str,
        start: datetime,
        end: datetime,
        after: tuple[datetime, int] | None,
        limit: int,
    ) -> tuple[list[tuple[str, str, int, int]], list[tuple[datetime, JournalRow]]]:
        """The pair's customer rows that took effect in (start, end] (a deadline's
        row at its deadline, others when written): (movement, bucket, sum,
        count) for each kind, and a page of (took effect, row) after `after`."""
        ...

    async def set_alert(
        self,
        account_id: str,
        asset: str,
        threshold: int,
        recovery: int,
        percent: bool,
        now: datetime,
        top_up: tuple[int, int] = (0, 0),
    ) -> BalanceAlert | None:
        """Create or replace the pair's alert, starting where its balance is, with its
        top-up rule (target, monthly cap; (0, 0): none); a replaced alert keeps its
        pending requests and the month's total. None: no such account.
        Errors: AlertLimitExceeded."""
        ...

    async def list_alerts(self, account_id: str) -> list[BalanceAlert] | None: ...

    async def delete_alert(self, account_id: str, asset: str) -> bool: ...

    async def due(self, now: datetime, limit: int) -> tuple[list[str], list[tuple[str, str]]]: ...

    async def reservation_stats(self, now: datetime) -> tuple[int, float]: ...

    async def maintain_idempotency(
        self, now: datetime, until: datetime, drop: bool = True
    ) -> tuple[int, int]:
        """Make the key store ready for keys expiring up to `until`; forget keys
        expired by `now` (when `drop`). Returns (created, dropped) units of storage."""
        ...

    def maintains_idempotency(self) -> bool:
        """Whether this process makes the key store's storage itself (else the owner's
        `ledger maintain` does)."""
        ...

    def idempotency_ready_until(self) -> datetime | None:
        """How far ahead the key store was ready at the last maintain_idempotency."""
        ...

    async def archive_reservations(
        self, expired_before: datetime, now: datetime, limit: int
    ) -> int: ...

    async def ping(self) -> None: ...


class CommandSink(Protocol):
    """Where validated commands go: the local Writer, or the route to the elected one
    (ledger.service.election)."""

    async def submit(self, cmd: c.MutatingCommand) -> tuple[Result, bool]:
        """Returns (result, replayed); raises the command's LedgerError."""
        ...
