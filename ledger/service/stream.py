"""WatchTransactions: the change stream (issue 17; docs/design.md, "The change stream").

A stream is a cursor over the journal in (xid, entry_id) order, read in pages
of at most WATCH_PAGE_ROWS rows below the horizon (the oldest transaction
still running). The server holds one page per stream at most and sends it
only as fast as the consumer reads (gRPC flow control): a slow consumer
costs its own memory nothing beyond that page, and writers never wait for
it. A stream that has read everything below the horizon waits until the
horizon moves, which one task per process polls for every stream
(`HorizonWatch`).

Positions are "<xid>-<entry_id>", each 20 decimal digits, so that text order
is stream order. A message's position is that of its transaction's last row
the stream let through; resuming after it is exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import TypeVar

from ledger.domain import commands as c
from ledger.domain import errors, limits
from ledger.domain.access import LOCAL, Access
from ledger.domain.model import AlertEvent, Balance, JournalRow, StreamTransaction, built
from ledger.observability import metrics
from ledger.service.clock import Clock
from ledger.service.ports import JournalFilter, SerializationConflict, StorageUnavailable, Store
from ledger.service.tasks import stop_task

T = TypeVar("T")
Position = tuple[int, int]
START: Position = (0, 0)
# Streams of one filter caught up together ask for the same page within one
# horizon poll, so a few pages share all they can. Each page holds up to
# WATCH_PAGE_ROWS rows and their messages: 64 of them kept a writer with four
# streams 140 MB bigger (docs/performance.md, "Change streams served by a replica
# that is not the writer").
_PAGE_CACHE_MAX = 8
# A page: its rows, the horizon it was read under, and its transactions as sent.
_Page = tuple[list[JournalRow], int, list[StreamTransaction]]
_ENTRY_MAX = limits.INT64_MAX
_POSITION = re.compile(r"(\d{1,20})-(\d{1,20})")


def encode_position(position: Position) -> str:
    return f"{position[0]:020d}-{position[1]:020d}"


def decode_position(text: str, field: str) -> Position:
    """Errors: InvalidArgument naming `field`."""
    m = _POSITION.fullmatch(text) if len(text) <= limits.POSITION_LEN_MAX else None
    if m is None or int(m[1]) >= 2**64 or int(m[2]) > _ENTRY_MAX:
        raise errors.InvalidArgument(
            [
                errors.FieldViolation(
                    field, "is not a position sent by WatchTransactions (<xid>-<entry_id>)"
                )
            ]
        )
    return int(m[1]), int(m[2])


@dataclass(frozen=True)
class StreamMessage:
    """The transactions of one page (in position order; `position` is the last
    one's), or none: a checkpoint, nothing the stream may see was committed up
    to `position`, so a consumer may resume after it. One message per page, so
    that a stream's cost per transaction is not one gRPC message each."""

    position: Position
    transactions: list[StreamTransaction]


@dataclass(frozen=True)
class WatchSettings:
    # How often the process looks at the horizon while streams wait (seconds).
    poll_s: float = 0.05
    # A caught-up stream sends a checkpoint this often when its cursor moved on
    # past rows it does not see (so its consumer's resume point moves too).
    checkpoint_s: float = 5.0
    streams_per_caller_max: int = limits.WATCH_STREAMS_PER_CALLER_MAX
    page_rows: int = limits.WATCH_PAGE_ROWS


class HorizonWatch:
    """One task per process polls the horizon while any stream waits on it."""

    def __init__(self, store: Store, poll_s: float) -> None:
        self._store = store
        self._poll_s = poll_s
        self._horizon = 0
        self._changed = asyncio.Event()
        self._waiting = 0
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def wait_past(self, horizon: int, timeout_s: float) -> None:
        """Return once the horizon is past `horizon`, or after `timeout_s`."""
        if self._horizon > horizon:
            return
        self._waiting += 1
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="ledger-horizon")
        try:
            deadline = time.monotonic() + timeout_s
            while self._horizon <= horizon and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await self._changed.wait()
        finally:
            self._waiting -= 1

    async def _run(self) -> None:
        while self._waiting:
            try:
                horizon = await self._store.journal_horizon()
            except (StorageUnavailable, SerializationConflict):
                horizon = self._horizon
            if horizon != self._horizon:
                self._horizon = horizon
                changed, self._changed = self._changed, asyncio.Event()
                changed.set()
            await asyncio.sleep(self._poll_s)

    def wake(self) -> None:
        """Wake every waiting stream now (the server is stopping)."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def close(self) -> None:
        self._closed = True
        self.wake()
        if self._task is not None:
            await stop_task(self._task)


class ChangeStream:
    def __init__(self, store: Store, clock: Clock, settings: WatchSettings = WatchSettings()):
        self._store = store
        self._clock = clock
        self._settings = settings
        self._watch = HorizonWatch(store, settings.poll_s)
        self._open: dict[str, int] = {}
        self._closing = False
        self._pages: OrderedDict[
            tuple[Position, JournalFilter],
            asyncio.Future[_Page],
        ] = OrderedDict()
        # Each open stream's lag (seconds behind the newest row it has sent, 0
        # when caught up): the max is a gauge, without a label per stream.
        self._lags: dict[int, float] = {}
        metrics.STREAM_LAG_MAX.set_function(lambda: max(self._lags.values(), default=0.0))

    async def close(self) -> None:
        """End every stream (UNAVAILABLE: its consumer resumes elsewhere), then the poller."""
        self._closing = True
        await self._watch.close()

    def open_streams(self, caller: str) -> int:
        """Streams `caller` holds open on this process."""
        return self._open.get(caller, 0)

    def validate(
        self, account_id: str, account_prefix: str, asset: str, after: str, from_now: bool
    ) -> tuple[JournalFilter, Position | None]:
        """The filter and the position to start after (None: now).
        Errors: InvalidArgument."""
        v = c.Violations()
        if account_id:
            v.account_id("account_id", account_id)
        if account_prefix:
            # What an account id may start with: its own characters, not '@'.
            v.account_id("account_prefix", account_prefix)
        if asset:
            v.asset("asset", asset)
        if after and from_now:
            v.add("from_now", "must not be set together with after_position")
        v.raise_if_any()
        start = decode_position(after, "after_position") if after else None
        if start is None and not from_now:
            start = START
        return JournalFilter(account_id, account_prefix, asset, None), start

    async def watch(
        self,
        account_id: str,
        account_prefix: str,
        asset: str,
        after: str,
        from_now: bool,
        access: Access = LOCAL,
    ) -> AsyncIterator[StreamMessage]:
        """Every committed transaction the filter and the caller's scope let
        through, after the position (or from now, or from the start), in position
        order, for as long as the caller reads.

        Errors (before the first message): PermissionDenied, InvalidArgument,
        TooManyStreams; later: DatabaseUnavailable (resume after the last position)."""
        access.require("WatchTransactions")
        flt, start = self.validate(account_id, account_prefix, asset, after, from_now)
        flt = flt._replace(scope=access.scope)
        held = self._open.get(access.caller, 0)
        if held >= self._settings.streams_per_caller_max:
            raise errors.TooManyStreams(
                f"caller {access.caller} has {held} change streams open, the most one caller"
                f" may hold (WATCH_STREAMS_PER_CALLER_MAX {self._settings.streams_per_caller_max});"
                " close one, or watch a wider filter on one stream",
                {"limit": str(self._settings.streams_per_caller_max)},
            )
        self._open[access.caller] = held + 1
        metrics.STREAMS_OPEN.inc()
        token = object()
        self._lags[id(token)] = 0.0
        try:
            async for msg in self._follow(flt, start, id(token)):
                yield msg
        finally:
            self._lags.pop(id(token), None)
            metrics.STREAMS_OPEN.dec()
            left = self._open.get(access.caller, 1) - 1
            if left:
                self._open[access.caller] = left
            else:
                self._open.pop(access.caller, None)

    async def _follow(
        self, flt: JournalFilter, start: Position | None, lag_key: int
    ) -> AsyncIterator[StreamMessage]:
        s = self._settings
        # "Now": from the horizon of a snapshot taken now, skipping what had
        # committed by then (xids below its xmax and not in progress in it), so
        # what commits from now on comes, transactions already running included.
        committed_before: tuple[int, frozenset[int]] | None = None
        if start is None:
            xmin, xmax, running = await self._guarded(self._store.journal_snapshot())
            start = (xmin - 1, _ENTRY_MAX)
            committed_before = (xmax, frozenset(running))
        cursor = start  # where the next page starts (past rows it does not see, too)
        horizon_seen = -1  # the newest horizon this stream has read under
        sent = start  # the last position the consumer was told
        last_sent_at = time.monotonic()
        while True:
            if self._closing:
                raise errors.DatabaseUnavailable(
                    "this server is stopping; resume after the last position received,"
                    " on any replica",
                    {"cause": "server stopping"},
                )
            rows, horizon, txs = await self._page(cursor, flt, horizon_seen)
            horizon_seen = max(horizon_seen, horizon)
            if committed_before is not None:
                before_xmax, in_progress = committed_before
                txs = [
                    t for t in txs if t.position[0] >= before_xmax or t.position[0] in in_progress
                ]
                if horizon >= before_xmax and len(rows) < s.page_rows:
                    committed_before = None  # everything before now is behind the cursor
            if txs:
                now = self._clock.now()
                lags = [max(0.0, (now - tx.created_at).total_seconds()) for tx in txs]
                metrics.observe_all(metrics.STREAM_LAG_SECONDS, lags)
                self._lags[lag_key] = lags[-1]
                yield StreamMessage(txs[-1].position, txs)
                cursor = sent = txs[-1].position
                last_sent_at = time.monotonic()
            if rows:  # past the rows it skipped too (every page ends with a whole transaction)
                cursor = max(cursor, (rows[-1].xid, rows[-1].entry.entry_id))
            if len(rows) >= s.page_rows:
                continue  # more below the horizon: the next page at once
            # Everything below the horizon is read: nothing before it can still come.
            self._lags[lag_key] = 0.0
            cursor = max(cursor, (horizon - 1, _ENTRY_MAX))
            if cursor > sent and time.monotonic() - last_sent_at >= s.checkpoint_s:
                yield StreamMessage(cursor, [])
                sent, last_sent_at = cursor, time.monotonic()
            await self._watch.wait_past(horizon, s.checkpoint_s)

    async def _page(self, cursor: Position, flt: JournalFilter, horizon_seen: int) -> _Page:
        """A page of the journal, shared by the streams that ask for the same one.

        Streams with one filter, caught up together, ask for the same page at
        each horizon change: one read serves them all. A page read under an
        older horizon is still right for a stream that asks later: rows below
        a horizon never change, and every row above it sorts after them, so
        the older page is a prefix of a fresh one (a full page is the same
        page); the stream reads on from its end. Bounded: the last
        PAGE_CACHE_MAX pages, and concurrent reads of one page are one read."""
        key = (cursor, flt)
        found = self._pages.get(key)
        if found is not None and found.done() and not found.cancelled():
            stale = found.exception() is None and self._partial_under(found.result(), horizon_seen)
            if stale or found.exception() is not None:
                found = None  # a partial page this stream has already read: read again
        if found is None:
            found = asyncio.ensure_future(self._read_page(cursor, flt))
            self._pages[key] = found
            while len(self._pages) > _PAGE_CACHE_MAX:
                self._pages.popitem(last=False)
        try:
            return await asyncio.shield(found)
        except BaseException:
            if self._pages.get(key) is found and found.done():
                del self._pages[key]  # a failed read is not kept
            raise

    def _partial_under(self, page: _Page, horizon_seen: int) -> bool:
        """A page that ended at its horizon (not full), read under a horizon the stream
        has seen already: it holds nothing new for that stream."""
        rows, horizon, _ = page
        return len(rows) < self._settings.page_rows and horizon <= horizon_seen

    async def _read_page(self, cursor: Position, flt: JournalFilter) -> _Page:
        rows, horizon, events = await self._guarded(
            self._store.journal_page(cursor, flt, self._settings.page_rows)
        )
        return rows, horizon, group(rows, events)

    @staticmethod
    async def _guarded(op: Awaitable[T]) -> T:
        """Errors: DatabaseUnavailable (the consumer resumes after its last position)."""
        try:
            return await op
        except (StorageUnavailable, SerializationConflict) as exc:
            raise errors.DatabaseUnavailable(
                "the database is unavailable; resume after the last position received",
                {"cause": str(exc) or type(exc).__name__},
            ) from exc


def group(
    rows: list[JournalRow], events: dict[tuple[int, str], list[AlertEvent]] | None = None
) -> list[StreamTransaction]:
    """Rows (in stream order) as transactions: consecutive rows of one xid and
    one transaction id; the balance after each pair is its last row's."""
    out: list[StreamTransaction] = []
    i = 0
    while i < len(rows):
        first = rows[i]
        j = i
        while (
            j < len(rows)
            and rows[j].xid == first.xid
            and rows[j].entry.transaction_id == first.entry.transaction_id
        ):
            j += 1
        part = rows[i:j]
        balances: dict[tuple[str, str], Balance] = {}
        for r in part:
            if r.after is not None:
                balances[(r.entry.account_id, r.entry.asset)] = r.after
        out.append(
            built(
                StreamTransaction,
                position=(first.xid, part[-1].entry.entry_id),
                transaction_id=first.entry.transaction_id,
                caller=first.caller,
                idempotency_key=first.idempotency_key,
                created_at=first.entry.created_at,
                entries=[r.entry for r in part],
                balances=list(balances.values()),
                events=(events or {}).get((first.xid, first.entry.transaction_id), []),
            )
        )
        i = j
    return out
