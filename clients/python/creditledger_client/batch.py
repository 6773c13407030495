"""SubmitBatch for both clients: commands, per-command outcomes, and the batchers
that gather many callers' commands into few calls.

An event-rate caller (one Charge per email open) hands each event to a batcher
and awaits its own outcome; the batcher sends what has gathered as one
SubmitBatch when `max_commands` are waiting, or `max_delay_ms` after the first
of them, whichever comes first. Every command keeps its own idempotency key
(made when the command is built, kept across the client's retries of the call),
so a retried or repeated flush replays instead of charging twice.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import grpc
from creditledger.v1 import ledger_pb2 as pb

from creditledger_client import _requests as rq
from creditledger_client.errors import LedgerError, error_from_status
from creditledger_client.models import (
    GrantResult,
    Overage,
    Precondition,
    ReservationResult,
    balance_from_pb,
    lot_from_pb,
    reservation_result,
)

if TYPE_CHECKING:
    from creditledger_client.aio import LedgerClient
    from creditledger_client.sync import SyncLedgerClient

Command = (
    pb.ChargeRequest
    | pb.ReserveRequest
    | pb.SettleRequest
    | pb.ReleaseRequest
    | pb.RefundRequest
    | pb.GrantRequest
)
"""A batch command: the request message of its single-call RPC (build it with
the functions below, which give it its idempotency key)."""

Result = ReservationResult | GrantResult

#: Commands per SubmitBatch call, as the server limits them (BATCH_COMMANDS_MAX).
BATCH_COMMANDS_MAX = 1000

_FIELD = {
    pb.ChargeRequest: "charge",
    pb.ReserveRequest: "reserve",
    pb.SettleRequest: "settle",
    pb.ReleaseRequest: "release",
    pb.RefundRequest: "refund",
    pb.GrantRequest: "grant",
}
_CODES = {code.value[0]: code for code in grpc.StatusCode}
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """One command's outcome: its result, or the error its single call would raise."""

    result: Result | None
    error: LedgerError | None
    replayed: bool

    @property
    def ok(self) -> bool:
        return self.error is None

    def unwrap(self) -> Result:
        """The result; raises the command's LedgerError when it failed."""
        if self.error is not None:
            raise self.error
        if self.result is None:
            raise RuntimeError("a batch outcome with neither result nor error")
        return self.result


# --- commands (each gets its idempotency key now) -------------------------------------


def charge(
    account_id: str,
    asset: str,
    amount: int,
    *,
    idempotency_key: str | None = None,
    metadata: Mapping[str, str] | None = None,
    overage: Overage = Overage.REJECT,
    preconditions: Iterable[Precondition] = (),
) -> pb.ChargeRequest:
    return rq.charge(
        account_id,
        asset,
        amount,
        idempotency_key=idempotency_key,
        metadata=metadata,
        overage=overage,
        conditions=preconditions,
    )


def reserve(
    account_id: str,
    asset: str,
    amount: int,
    *,
    idempotency_key: str | None = None,
    ttl: timedelta | None = None,
    metadata: Mapping[str, str] | None = None,
    overage: Overage = Overage.REJECT,
    preconditions: Iterable[Precondition] = (),
) -> pb.ReserveRequest:
    return rq.reserve(
        account_id,
        asset,
        amount,
        idempotency_key=idempotency_key,
        ttl=ttl,
        metadata=metadata,
        overage=overage,
        conditions=preconditions,
    )


def settle(
    reservation_id: str,
    amount: int,
    *,
    final: bool = False,
    idempotency_key: str | None = None,
    preconditions: Iterable[Precondition] = (),
) -> pb.SettleRequest:
    return rq.settle(
        reservation_id,
        amount,
        final=final,
        idempotency_key=idempotency_key,
        conditions=preconditions,
    )


def release(
    reservation_id: str,
    amount: int = 0,
    *,
    idempotency_key: str | None = None,
    preconditions: Iterable[Precondition] = (),
) -> pb.ReleaseRequest:
    return rq.release(
        reservation_id, amount, idempotency_key=idempotency_key, conditions=preconditions
    )


def refund(
    reservation_id: str,
    amount: int,
    *,
    reason: str = "",
    idempotency_key: str | None = None,
    preconditions: Iterable[Precondition] = (),
) -> pb.RefundRequest:
    return rq.refund(
        reservation_id,
        amount,
        reason=reason,
        idempotency_key=idempotency_key,
        conditions=preconditions,
    )


def grant(
    account_id: str,
    asset: str,
    amount: int,
    *,
    idempotency_key: str | None = None,
    metadata: Mapping[str, str] | None = None,
    expires_at: datetime | None = None,
    priority: int | None = None,
    source: str = "",
    category: str = "",
    unit_cost_micros: int | None = None,
    cost_currency: str = "",
    preconditions: Iterable[Precondition] = (),
) -> pb.GrantRequest:
    return rq.grant(
        account_id,
        asset,
        amount,
        idempotency_key=idempotency_key,
        metadata=metadata,
        expires_at=expires_at,
        priority=priority,
        source=source,
        category=category,
        unit_cost_micros=unit_cost_micros,
        cost_currency=cost_currency,
        conditions=preconditions,
    )


# --- the wire -------------------------------------------------------------------------


def batch_request(commands: Iterable[Command], atomic: bool) -> pb.SubmitBatchRequest:
    """The SubmitBatch request of `commands`, in order."""
    wrapped = []
    for command in commands:
        name = _FIELD.get(type(command))
        if name is None:
            raise TypeError(f"not a batch command: {type(command).__name__}")
        one = pb.BatchCommand()
        getattr(one, name).CopyFrom(command)
        wrapped.append(one)
    return pb.SubmitBatchRequest(commands=wrapped, atomic=atomic)


def outcomes_from_pb(resp: pb.SubmitBatchResponse) -> list[BatchOutcome]:
    """Each command's outcome, in the request's order."""
    return [_outcome(o) for o in resp.outcomes]


def _outcome(o: pb.BatchOutcome) -> BatchOutcome:
    which = o.WhichOneof("outcome")
    if which == "error":
        status = o.error
        code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
        trailing: Any = [(_STATUS_DETAILS_KEY, status.SerializeToString())]
        return BatchOutcome(None, error_from_status(code, status.message, trailing), o.replayed)
    if which == "grant":
        result: Result = GrantResult(
            balance_from_pb(o.grant.balance), lot_from_pb(o.grant.lot), o.replayed
        )
        return BatchOutcome(result, None, o.replayed)
    if which is None:
        raise RuntimeError("a batch outcome with neither result nor error")
    return BatchOutcome(reservation_result(getattr(o, which), o.replayed), None, o.replayed)


# --- batchers -------------------------------------------------------------------------


class Batcher:
    """Gathers commands (e.g. one Charge per event) from many coroutines and
    sends them as SubmitBatch calls: at `max_commands`, or `max_delay_ms` after
    the first waiting one. Each `await batcher.charge(...)` answers its own
    command's result or raises its own LedgerError; a failure of the whole call
    (UNAVAILABLE after the client's retries, say) is raised to every command of
    that call. Use `async with client.batcher() as b:` (or `await b.close()`):
    closing sends what waits and waits for every call in flight.
    """

    def __init__(
        self,
        client: LedgerClient,
        max_commands: int = 100,
        max_delay_ms: float = 5.0,
        timeout_s: float | None = None,
    ) -> None:
        if not 1 <= max_commands <= BATCH_COMMANDS_MAX:
            raise ValueError(f"max_commands must be 1 to {BATCH_COMMANDS_MAX}")
        self._client = client
        self._max = max_commands
        self._delay_s = max_delay_ms / 1000.0
        self._timeout_s = timeout_s
        self._waiting: list[tuple[Command, asyncio.Future[Result]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._calls: set[asyncio.Task[None]] = set()

    async def submit(self, command: Command) -> Result:
        """Queue one command; its result, or its LedgerError raised."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((command, future))
        if len(self._waiting) >= self._max:
            self.flush_soon()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._delay_s, self.flush_soon)
        return await future

    async def charge(
        self,
        account_id: str,
        asset: str,
        amount: int,
        *,
        idempotency_key: str | None = None,
        metadata: Mapping[str, str] | None = None,
        overage: Overage = Overage.REJECT,
        preconditions: Iterable[Precondition] = (),
    ) -> ReservationResult:
        """One Charge through the batcher. Raises what `LedgerClient.charge` raises."""
        result = await self.submit(
            charge(
                account_id,
                asset,
                amount,
                idempotency_key=idempotency_key,
                metadata=metadata,
                overage=overage,
                preconditions=preconditions,
            )
        )
        if not isinstance(result, ReservationResult):
            raise RuntimeError("a Charge answered something else than a reservation")
        return result

    def flush_soon(self) -> None:
        """Send what is waiting now, without waiting for the call."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting = self._waiting, []
        if waiting:
            task = asyncio.get_running_loop().create_task(self._send(waiting))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    async def close(self) -> None:
        """Send what waits and wait for every call in flight."""
        self.flush_soon()
        while self._calls:
            await asyncio.gather(*self._calls, return_exceptions=True)

    async def __aenter__(self) -> Batcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _send(self, waiting: list[tuple[Command, asyncio.Future[Result]]]) -> None:
        try:
            outcomes = await self._client.submit_batch(
                [c for c, _ in waiting], timeout_s=self._timeout_s
            )
        except BaseException as exc:
            for _, future in waiting:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), outcome in zip(waiting, outcomes, strict=True):
            if future.done():
                continue  # its caller gave up waiting
            if outcome.error is not None:
                future.set_exception(outcome.error)
            else:
                future.set_result(outcome.unwrap())


class SyncBatcher:
    """The batcher of `SyncLedgerClient`, for threads: `submit` and `charge`
    return a `concurrent.futures.Future` at once (call `.result()` to wait for
    the command's result or its LedgerError). Sends from its own thread at
    `max_commands`, or `max_delay_ms` after the first waiting command; `close()`
    (or leaving `with client.batcher() as b:`) sends what waits and waits for it.
    """

    def __init__(
        self,
        client: SyncLedgerClient,
        max_commands: int = 100,
        max_delay_ms: float = 5.0,
        timeout_s: float | None = None,
    ) -> None:
        if not 1 <= max_commands <= BATCH_COMMANDS_MAX:
            raise ValueError(f"max_commands must be 1 to {BATCH_COMMANDS_MAX}")
        self._client = client
        self._max = max_commands
        self._delay_s = max_delay_ms / 1000.0
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._waiting: list[tuple[Command, Future[Result]]] = []
        self._timer: threading.Timer | None = None
        self._calls: set[threading.Thread] = set()

    def submit(self, command: Command) -> Future[Result]:
        """Queue one command; a Future of its result (or of its LedgerError)."""
        future: Future[Result] = Future()
        with self._lock:
            self._waiting.append((command, future))
            full = len(self._waiting) >= self._max
            if not full and self._timer is None:
                self._timer = threading.Timer(self._delay_s, self.flush_soon)
                self._timer.daemon = True
                self._timer.start()
        if full:
            self.flush_soon()
        return future

    def charge(
        self,
        account_id: str,
        asset: str,
        amount: int,
        *,
        idempotency_key: str | None = None,
        metadata: Mapping[str, str] | None = None,
        overage: Overage = Overage.REJECT,
        preconditions: Iterable[Precondition] = (),
    ) -> Future[Result]:
        """One Charge through the batcher; `.result()` is a ReservationResult."""
        return self.submit(
            charge(
                account_id,
                asset,
                amount,
                idempotency_key=idempotency_key,
                metadata=metadata,
                overage=overage,
                preconditions=preconditions,
            )
        )

    def flush_soon(self) -> None:
        """Send what is waiting now, on a thread of its own."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            waiting, self._waiting = self._waiting, []
            if not waiting:
                return
            thread = threading.Thread(target=self._send, args=(waiting,), daemon=True)
            self._calls.add(thread)
        thread.start()

    def close(self) -> None:
        """Send what waits and wait for every call in flight."""
        self.flush_soon()
        while True:
            with self._lock:
                calls = list(self._calls)
            if not calls:
                return
            for thread in calls:
                thread.join()

    def __enter__(self) -> SyncBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, waiting: list[tuple[Command, Future[Result]]]) -> None:
        try:
            try:
                outcomes = self._client.submit_batch(
                    [c for c, _ in waiting], timeout_s=self._timeout_s
                )
            except Exception as exc:
                for _, future in waiting:
                    future.set_exception(exc)
                return
            for (_, future), outcome in zip(waiting, outcomes, strict=True):
                if outcome.error is not None:
                    future.set_exception(outcome.error)
                else:
                    future.set_result(outcome.unwrap())
        finally:
            with self._lock:
                self._calls.discard(threading.current_thread())
