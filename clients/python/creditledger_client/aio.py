"""LedgerClient: the asyncio client (grpc.aio)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
import grpc.aio
from creditledger.v1 import ledger_pb2 as pb
from creditledger.v1 import ledger_pb2_grpc

from creditledger_client import _requests as rq
from creditledger_client.batch import (
    Batcher,
    BatchOutcome,
    Command,
    batch_request,
    outcomes_from_pb,
)
from creditledger_client.config import (
    DEFAULT_KEEPALIVE,
    Attempts,
    CallMetadata,
    ClientConfig,
    Keepalive,
    RetryPolicy,
    TlsConfig,
    aio_channel,
    replayed_from,
    with_request_id,
)
from creditledger_client.errors import AccountExists, LedgerError, error_from_rpc_error
from creditledger_client.hold import Hold, HoldOnError, release_key, settle_key
from creditledger_client.models import (
    Account,
    BalanceAlert,
    BalanceResult,
    BalanceView,
    Breakage,
    CapWindow,
    Entry,
    EntryPage,
    GrantResult,
    GrantSchedule,
    GroupLeg,
    Overage,
    PeriodUnit,
    Precondition,
    Reservation,
    ReservationGroup,
    ReservationPage,
    ReservationResult,
    ReservationState,
    ReserveGroupResult,
    Rollover,
    SchedulePage,
    ScheduleResult,
    Statement,
    StreamedTransaction,
    VoidResult,
    account_from_pb,
    alert_from_pb,
    balance_from_pb,
    balance_view_from_pb,
    breakage_from_pb,
    entry_from_pb,
    group_from_pb,
    lot_from_pb,
    reservation_from_pb,
    reservation_result,
    schedule_from_pb,
    statement_from_pb,
    streamed_transaction_from_pb,
)

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


class LedgerClient:
    """Asyncio client of creditledger.v1.LedgerService; one method per RPC.

    Use as `async with LedgerClient("127.0.0.1:50051") as client: ...` or call
    `close()`. Every method raises a `LedgerError` subclass on failure (see
    `creditledger_client.errors`). Mutating methods take `idempotency_key`;
    without one a UUID4 is made per call and kept across the client's own
    retries, so a retried call never applies twice. Pass the same key yourself
    to make retries across process restarts safe too.

    Every method takes `timeout_s`, the deadline of the whole call: its
    attempts and the pauses between them share it (without it, the client's
    `total_timeout_s`), and `call_metadata`, gRPC metadata for that call only.
    Every call carries an `x-request-id` (the caller's, or a UUID4 kept across
    its retries); a failure's `LedgerError.request_id` matches the server's
    log lines. `interceptors` (unary-unary client interceptors of the
    channel's flavour) run on every attempt, for tracing or logging.
    """

    def __init__(
        self,
        target: str,
        *,
        tls: TlsConfig | None = None,
        token: str | None = None,
        timeout_s: float = 5.0,
        total_timeout_s: float = 30.0,
        retry: RetryPolicy | None = None,
        keepalive: Keepalive | None = DEFAULT_KEEPALIVE,
        channel_options: Sequence[tuple[str, Any]] = (),
        metadata: Sequence[tuple[str, str]] = (),
        config: ClientConfig | None = None,
        interceptors: Sequence[grpc.aio.UnaryUnaryClientInterceptor] = (),
    ) -> None:
        self.config = config or ClientConfig(
            target=target,
            tls=tls,
            token=token,
            timeout_s=timeout_s,
            total_timeout_s=total_timeout_s,
            retry=retry or RetryPolicy(),
            keepalive=keepalive,
            channel_options=channel_options,
            metadata=metadata,
        )
        self._channel = aio_channel(self.config, interceptors)
        self._stub = ledger_pb2_grpc.LedgerServiceStub(self._channel)
        self._metadata = self.config.call_metadata()
        self._rng = random.Random()

    async def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[_Req, _Resp],
        request: _Req,
        timeout_s: float | None,
        call_metadata: CallMetadata = (),
    ) -> tuple[_Resp, bool]:
        """One RPC with the retry policy; returns the response and its `replayed` flag."""
        attempts = Attempts(self.config, timeout_s, self._rng)
        metadata, request_id = with_request_id(self._metadata, call_metadata)
        while True:
            try:
                timeout = attempts.next_timeout_s()
                call = method(request, timeout=timeout, metadata=metadata)
                response = await call
                return response, replayed_from(await call.trailing_metadata())
            except grpc.RpcError as rpc_error:
                error = error_from_rpc_error(rpc_error, sent_request_id=request_id)
                cause: BaseException = rpc_error
            pause = attempts.pause_before_retry_s(error)
            if pause is None:
                raise attempts.give_up(error) from cause
            await asyncio.sleep(pause)

    # --- accounts -------------------------------------------------------------------

    async def create_account(
        self,
        account_id: str,
        metadata: Mapping[str, str] | None = None,
        *,
        parent_id: str = "",
        exist_ok: bool = False,
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> Account:
        """Creates an account; with `parent_id`, a member of that pool (it spends the
        pool's lots when it has none of its own). Raises AccountExists (unless
        exist_ok: then returns it), AccountNotFound (the parent), PoolDepthExceeded,
        InvalidArgument.

        CreateAccount has no idempotency key: with exist_ok=True a retried
        create that had in fact succeeded reads as success.
        """
        try:
            resp, _ = await self._call(
                self._stub.CreateAccount,
                rq.create_account(account_id, metadata, parent_id),
                timeout_s,
                call_metadata,
            )
        except AccountExists:
            if not exist_ok:
                raise
            return await self.get_account(
                account_id, timeout_s=timeout_s, call_metadata=call_metadata
            )
        return account_from_pb(resp.account)

    async def get_account(
        self, account_id: str, *, timeout_s: float | None = None, call_metadata: CallMetadata = ()
    ) -> Account:
        """An account with its balances. Raises AccountNotFound."""
        resp, _ = await self._call(
            self._stub.GetAccount,
            pb.GetAccountRequest(account_id=account_id),
            timeout_s,
            call_metadata,
        )
        return account_from_pb(resp.account)

    # --- movements ------------------------------------------------------------------

    async def grant(
        self,
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
        top_up_request_id: str = "",
        preconditions: Iterable[Precondition] = (),
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> GrantResult:
        """Adds `amount` as a new lot, of `category` (default paid) with an optional
        cost basis (`unit_cost_micros` per credit in `cost_currency`); with
        `top_up_request_id` (a TOP_UP_REQUESTED event's request_id) it settles that
        top-up request. Raises AccountNotFound, BalanceLimitExceeded, PreconditionFailed,
        IdempotencyKeyReused, InvalidArgument, TopUpRequestNotPending."""
        request = rq.grant(
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
            top_up_request_id=top_up_request_id,
            conditions=preconditions,
        )
        resp, replayed = await self._call(self._stub.Grant, request, timeout_s, call_metadata)
        return GrantResult(balance_from_pb(resp.balance), lot_from_pb(resp.lot), replayed)

    async def reserve(
        self,
        account_id: str,
        asset: str,
        amount: int,
        *,
        idempotency_key: str | None = None,
        ttl: timedelta | None = None,
        metadata: Mapping[str, str] | None = None,
        overage: Overage = Overage.REJECT,
        preconditions: Iterable[Precondition] = (),
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> ReservationResult:
        """Holds `amount`, all or nothing (REJECT); CAP holds what there is, up to it
        (`taken` says how much); DEBT may go below zero down to the floor. Raises
        InsufficientCredits, CapExceeded, PreconditionFailed, AccountNotFound,
        IdempotencyKeyReused, InvalidArgument."""
        request = rq.reserve(
            account_id,
            asset,
            amount,
            idempotency_key=idempotency_key,
            ttl=ttl,
            metadata=metadata,
            overage=overage,
            conditions=preconditions,
        )
        resp, replayed = await self._call(self._stub.Reserve, request, timeout_s, call_metadata)
        return reservation_result(resp, replayed)

    async def reserve_group(
        self,
        legs: Iterable[GroupLeg],
        *,
        idempotency_key: str | None = None,
        ttl: timedelta | None = None,
        metadata: Mapping[str, str] | None = None,
        overage: Overage = Overage.REJECT,
        preconditions: Iterable[Precondition] = (),
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> ReserveGroupResult:
        """Holds every leg or none (a precondition names one of the legs' pairs);
        DEBT lets each leg go below zero down to its pair's floor, still all or
        none; CAP holds what is left for each leg, in order, possibly 0 (a leg
        that took 0 has no reservation_id; a group that took nothing, no
        group_id). Raises InsufficientCredits (with leg_key), CapExceeded,
        PreconditionFailed, AccountNotFound, IdempotencyKeyReused, InvalidArgument."""
        request = rq.reserve_group(
            legs,
            idempotency_key=idempotency_key,
            ttl=ttl,
            metadata=metadata,
            overage=overage,
            conditions=preconditions,
        )
        resp, replayed = await self._call(
            self._stub.ReserveGroup, request, timeout_s, call_metadata
        )
        return ReserveGroupResult(
            group_from_pb(resp.group), replayed, tuple(balance_from_pb(b) for b in resp.balances)
        )

    async def settle(
        self,
        reservation_id: str,
        amount: int,
        *,
        final: bool = False,
        idempotency_key: str | None = None,
        preconditions: Iterable[Precondition] = (),
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> ReservationResult:
        """Consumes `amount` of the hold; `final` releases the rest. Raises
        ReservationNotFound, ReservationClosed, ReservationExpired,
        AmountExceedsRemaining, PreconditionFailed, IdempotencyKeyReused,
        InvalidArgument."""
        request = rq.settle(
            reservation_id,
            amount,
            final=final,
            idempotency_key=idempotency_key,
            conditions=preconditions,
        )
        resp, replayed = await self._call(self._stub.Settle, request, timeout_s, call_metadata)
        return reservation_result(resp, replayed)

    async def release(
        self,
        reservation_id: str,
        amount: int = 0,
        *,
        idempotency_key: str | None = None,
        preconditions: Iterable[Precondition] = (),
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> ReservationResult:
        """Gives `amount` (0: all that remains) back to available. Raises
        ReservationNotFound, ReservationClosed, ReservationExpired,
        AmountExceedsRemaining, PreconditionFailed, IdempotencyKeyReused,
        InvalidArgument."""
        request = rq.release(
            reservation_id, amount, idempotency_key=idempotency_key, conditions=preconditions
        )
        resp, replayed = await self._call(self._stub.Release, request, timeout_s, call_metadata)
        return reservation_result(resp, replayed)

    async def refund(
        self,
        reservation_id: str,
        amount: int,
        *,
        reason: str = "",
        idempotency_key: str | None = None,
        preconditions: Iterable[Precondition] = (),
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> ReservationResult:
        """Gives settled credits back. Raises ReservationNotFound,
        AmountExceedsSettled, PreconditionFailed, IdempotencyKeyReused,
        InvalidArgument."""
        request = rq.refund(
            reservation_id,
            amount,
            reason=reason,
            idempotency_key=idempotency_key,
            conditions=preconditions,
        )
        resp, replayed = await self._call(self._stub.Refund, request, timeout_s, call_metadata)
        return reservation_result(resp, replayed)

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
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> ReservationResult:
        """Reserve and final Settle in one step (overage as reserve()). Raises
        InsufficientCredits, CapExceeded, PreconditionFailed, AccountNotFound,
        IdempotencyKeyReused, InvalidArgument."""
        request = rq.charge(
            account_id,
            asset,
            amount,
            idempotency_key=idempotency_key,
            metadata=metadata,
            overage=overage,
            conditions=preconditions,
        )
        resp, replayed = await self._call(self._stub.Charge, request, timeout_s, call_metadata)
        return reservation_result(resp, replayed)

    # --- reads ----------------------------------------------------------------------

    async def get_reservation(
        self,
        reservation_id: str,
        *,
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> Reservation:
        """One reservation. Raises ReservationNotFound."""
        request = pb.GetReservationRequest(reservation_id=reservation_id)
        resp, _ = await self._call(self._stub.GetReservation, request, timeout_s, call_metadata)
        return reservation_from_pb(resp.reservation)

    async def get_reservation_group(
        self,
        group_id: str,
        *,
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> ReservationGroup:
        """A group and its legs. Raises ReservationGroupNotFound."""
        request = pb.GetReservationGroupRequest(group_id=group_id)
        resp, _ = await self._call(
            self._stub.GetReservationGroup, request, timeout_s, call_metadata
        )
        return group_from_pb(resp.group)

    async def get_balance(
        self,
        account_id: str,
        asset: str,
        *,
        expiring_within: timedelta | None = None,
        include_lots: bool = False,
        as_of_time: datetime | None = None,
        as_of_position: str = "",
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> BalanceView:
        """One balance (zeros for an asset never granted), now, or as it was at
        `as_of_time` (deadlines due by then applied) or right after the stream
        position `as_of_position` (a StreamedTransaction.position); an as-of read
        takes neither `expiring_within` nor `include_lots`. Raises
        AccountNotFound, InvalidArgument."""
        request = rq.get_balance(
            account_id,
            asset,
            expiring_within=expiring_within,
            include_lots=include_lots,
            as_of_time=as_of_time,
            as_of_position=as_of_position,
        )
        resp, _ = await self._call(self._stub.GetBalance, request, timeout_s, call_metadata)
        return balance_view_from_pb(resp)

    async def list_entries(
        self,
        account_id: str,
        *,
        asset: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> EntryPage:
        """One page of the journal, newest first. Raises AccountNotFound, InvalidArgument."""
        request = rq.list_entries(
            account_id, asset=asset, page_size=page_size, page_token=page_token
        )
        resp, _ = await self._call(self._stub.ListEntries, request, timeout_s, call_metadata)
        return EntryPage(tuple(entry_from_pb(e) for e in resp.entries), resp.next_page_token)

    async def iter_entries(
        self,
        account_id: str,
        *,
        asset: str = "",
        page_size: int = 0,
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> AsyncIterator[Entry]:
        """Every entry of the journal, newest first, page after page.

        `timeout_s` is the deadline of each page's call, not of the whole walk.
        """
        token = ""
        while True:
            page = await self.list_entries(
                account_id,
                asset=asset,
                page_size=page_size,
                page_token=token,
                timeout_s=timeout_s,
                call_metadata=call_metadata,
            )
            for entry in page.entries:
                yield entry
            token = page.next_page_token
            if not token:
                return

    async def list_reservations(
        self,
        account_id: str,
        *,
        asset: str = "",
        state: ReservationState = ReservationState.UNSPECIFIED,
        page_size: int = 0,
        page_token: str = "",
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> ReservationPage:
        """One page of an account's reservations, oldest first; `state` filters
        (UNSPECIFIED: every state; an open one past expiry counts as EXPIRED).
        Raises AccountNotFound, InvalidArgument."""
        request = rq.list_reservations(
            account_id, asset=asset, state=state.value, page_size=page_size, page_token=page_token
        )
        resp, _ = await self._call(self._stub.ListReservations, request, timeout_s, call_metadata)
        return ReservationPage(
            tuple(reservation_from_pb(r) for r in resp.reservations), resp.next_page_token
        )

    async def iter_reservations(
        self,
        account_id: str,
        *,
        asset: str = "",
        state: ReservationState = ReservationState.UNSPECIFIED,
        page_size: int = 0,
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> AsyncIterator[Reservation]:
        """Every reservation of the account (matching the filters), oldest first.

        `timeout_s` is the deadline of each page's call, not of the whole walk.
        """
        token = ""
        while True:
            page = await self.list_reservations(
                account_id,
                asset=asset,
                state=state,
                page_size=page_size,
                page_token=token,
                timeout_s=timeout_s,
                call_metadata=call_metadata,
            )
            for reservation in page.reservations:
                yield reservation
            token = page.next_page_token
            if not token:
                return

    # --- spending policies ------------------------------------------------------------

    async def set_spending_limits(
        self,
        account_id: str,
        asset: str,
        floor: int,
        *,
        idempotency_key: str | None = None,
        preconditions: Iterable[Precondition] = (),
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> BalanceResult:
        """Sets how far below zero a DEBT-mode spend of the pair may go (`floor` <= 0).
        Needs the admin permission. Raises AccountNotFound, PreconditionFailed,
        PermissionDenied, IdempotencyKeyReused, InvalidArgument."""
        request = rq.set_spending_limits(
            account_id,
            asset,
            floor,
            idempotency_key=idempotency_key,
            conditions=preconditions,
        )
        resp, replayed = await self._call(
            self._stub.SetSpendingLimits, request, timeout_s, call_metadata
        )
        return BalanceResult(balance_from_pb(resp.balance), replayed)

    async def set_member_cap(
        self,
        account_id: str,
        asset: str,
        window: CapWindow,
        cap: int | None,
        *,
        idempotency_key: str | None = None,
        preconditions: Iterable[Precondition] = (),
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> BalanceResult:
        """Caps what the account may spend per `window` (None removes the cap).
        Needs the admin permission. Raises AccountNotFound, PreconditionFailed,
        PermissionDenied, IdempotencyKeyReused, InvalidArgument."""
        request = rq.set_member_cap(
            account_id,
            asset,
            window,
            cap,
            idempotency_key=idempotency_key,
            conditions=preconditions,
        )
        resp, replayed = await self._call(
            self._stub.SetMemberCap, request, timeout_s, call_metadata
        )
        return BalanceResult(balance_from_pb(resp.balance), replayed)

    # --- provenance and grant schedules -------------------------------------------------

    async def void_grant(
        self,
        lot_id: str,
        amount: int = 0,
        *,
        reason: str = "",
        idempotency_key: str | None = None,
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> VoidResult:
        """Takes back `amount` (0: all) of a lot's unspent credits, never held ones.
        Raises LotNotFound, CreditsHeld, AmountExceedsUnspent,
        IdempotencyKeyReused, InvalidArgument."""
        request = rq.void_grant(lot_id, amount, reason=reason, idempotency_key=idempotency_key)
        resp, replayed = await self._call(self._stub.VoidGrant, request, timeout_s, call_metadata)
        return VoidResult(
            lot_from_pb(resp.lot), balance_from_pb(resp.balance), resp.voided, replayed
        )

    async def create_grant_schedule(
        self,
        account_id: str,
        asset: str,
        amount: int,
        period_unit: PeriodUnit,
        period_count: int = 1,
        *,
        anchor: datetime | None = None,
        time_zone: str = "",
        end: datetime | None = None,
        priority: int | None = None,
        category: str = "",
        lot_life: timedelta | None = None,
        rollover: Rollover | None = None,
        idempotency_key: str | None = None,
        metadata: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> ScheduleResult:
        """Grants `amount` every `period_count` `period_unit`s from `anchor` (default
        now) in `time_zone` (default UTC); the current period is granted at once.
        Raises AccountNotFound, ScheduleLimitExceeded, IdempotencyKeyReused,
        InvalidArgument."""
        request = rq.create_grant_schedule(
            account_id,
            asset,
            amount,
            period_unit,
            period_count,
            anchor=anchor,
            time_zone=time_zone,
            end=end,
            priority=priority,
            category=category,
            lot_life=lot_life,
            rollover_=rollover,
            idempotency_key=idempotency_key,
            metadata=metadata,
        )
        resp, replayed = await self._call(
            self._stub.CreateGrantSchedule, request, timeout_s, call_metadata
        )
        return ScheduleResult(
            schedule_from_pb(resp.schedule), balance_from_pb(resp.balance), replayed
        )

    async def get_grant_schedule(
        self,
        schedule_id: str,
        *,
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> GrantSchedule:
        """One schedule, as it is now. Raises ScheduleNotFound."""
        request = pb.GetGrantScheduleRequest(schedule_id=schedule_id)
        resp, _ = await self._call(self._stub.GetGrantSchedule, request, timeout_s, call_metadata)
        return schedule_from_pb(resp.schedule)

    async def list_grant_schedules(
        self,
        account_id: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> SchedulePage:
        """One page of an account's schedules, oldest first. Raises AccountNotFound,
        InvalidArgument."""
        request = pb.ListGrantSchedulesRequest(
            account_id=account_id, page_size=page_size, page_token=page_token
        )
        resp, _ = await self._call(self._stub.ListGrantSchedules, request, timeout_s, call_metadata)
        return SchedulePage(
            tuple(schedule_from_pb(m) for m in resp.schedules), resp.next_page_token
        )

    async def iter_grant_schedules(
        self,
        account_id: str,
        *,
        page_size: int = 0,
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> AsyncIterator[GrantSchedule]:
        """Every schedule of the account, oldest first.

        `timeout_s` is the deadline of each page's call, not of the whole walk.
        """
        token = ""
        while True:
            page = await self.list_grant_schedules(
                account_id,
                page_size=page_size,
                page_token=token,
                timeout_s=timeout_s,
                call_metadata=call_metadata,
            )
            for schedule in page.schedules:
                yield schedule
            token = page.next_page_token
            if not token:
                return

    async def update_grant_schedule(
        self,
        schedule_id: str,
        *,
        amount: int | None = None,
        rollover: Rollover | None = None,
        remove_rollover: bool = False,
        idempotency_key: str | None = None,
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> ScheduleResult:
        """New amount and/or rollover from the next period on (the current period
        keeps its own). `balance` of the result is None. Raises ScheduleNotFound,
        IdempotencyKeyReused, InvalidArgument."""
        request = rq.update_grant_schedule(
            schedule_id,
            amount=amount,
            rollover_=rollover,
            remove_rollover=remove_rollover,
            idempotency_key=idempotency_key,
        )
        resp, replayed = await self._call(
            self._stub.UpdateGrantSchedule, request, timeout_s, call_metadata
        )
        return ScheduleResult(schedule_from_pb(resp.schedule), None, replayed)

    async def cancel_grant_schedule(
        self,
        schedule_id: str,
        *,
        void_remainder: bool = False,
        idempotency_key: str | None = None,
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> ScheduleResult:
        """No period starts after now; the current period's lot stays (and no longer
        rolls over) unless `void_remainder` voids its unspent credits. Raises
        ScheduleNotFound, IdempotencyKeyReused, InvalidArgument."""
        request = rq.cancel_grant_schedule(
            schedule_id, void_remainder=void_remainder, idempotency_key=idempotency_key
        )
        resp, replayed = await self._call(
            self._stub.CancelGrantSchedule, request, timeout_s, call_metadata
        )
        return ScheduleResult(
            schedule_from_pb(resp.schedule), balance_from_pb(resp.balance), replayed
        )

    async def get_breakage(
        self,
        account_id: str,
        asset: str,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> Breakage:
        """Credits written off at lot expiry in [start, end), by category and cost
        basis, attributed to each lot's expiry. Raises AccountNotFound, InvalidArgument."""
        request = rq.get_breakage(account_id, asset, start=start, end=end)
        resp, _ = await self._call(self._stub.GetBreakage, request, timeout_s, call_metadata)
        return breakage_from_pb(resp)

    # --- statements, alerts, the change stream ------------------------------------------

    async def get_statement(
        self,
        account_id: str,
        asset: str,
        from_time: datetime,
        to_time: datetime,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> Statement:
        """What took effect on the pair in (from_time, to_time]: opening, one line per
        movement, closing, and one page of the entries (`next_page_token` for the
        next, with the same arguments). Raises AccountNotFound, InvalidArgument."""
        request = rq.get_statement(
            account_id, asset, from_time, to_time, page_size=page_size, page_token=page_token
        )
        resp, _ = await self._call(self._stub.GetStatement, request, timeout_s, call_metadata)
        return statement_from_pb(resp)

    async def set_balance_alert(
        self,
        account_id: str,
        asset: str,
        threshold: int,
        *,
        recovery: int = 0,
        percent: bool = False,
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> BalanceAlert:
        """Sets the pair's alert (one per pair; setting again replaces it): events
        BALANCE_BELOW under `threshold`, BALANCE_EXHAUSTED at 0, BALANCE_RECOVERED back
        at `recovery` (0: the threshold), sent on the change stream; `percent`: of
        the pair's last Grant. Idempotent, so retried. Raises AccountNotFound,
        AlertLimitExceeded, PermissionDenied, InvalidArgument."""
        request = rq.set_balance_alert(
            account_id, asset, threshold, recovery=recovery, percent=percent
        )
        resp, _ = await self._call(self._stub.SetBalanceAlert, request, timeout_s, call_metadata)
        return alert_from_pb(resp.alert)

    async def list_balance_alerts(
        self, account_id: str, *, timeout_s: float | None = None, call_metadata: CallMetadata = ()
    ) -> tuple[BalanceAlert, ...]:
        """The account's alerts, by asset. Raises AccountNotFound, InvalidArgument."""
        request = pb.ListBalanceAlertsRequest(account_id=account_id)
        resp, _ = await self._call(self._stub.ListBalanceAlerts, request, timeout_s, call_metadata)
        return tuple(alert_from_pb(a) for a in resp.alerts)

    async def delete_balance_alert(
        self,
        account_id: str,
        asset: str,
        *,
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> bool:
        """Deletes the pair's alert; False when there was none. Idempotent, so retried.
        Raises PermissionDenied, InvalidArgument."""
        request = pb.DeleteBalanceAlertRequest(account_id=account_id, asset=asset)
        resp, _ = await self._call(self._stub.DeleteBalanceAlert, request, timeout_s, call_metadata)
        return resp.deleted

    async def watch_transactions(
        self,
        *,
        account_id: str = "",
        account_prefix: str = "",
        asset: str = "",
        after_position: str = "",
        from_now: bool = False,
        on_checkpoint: Callable[[str], object] | None = None,
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> AsyncIterator[StreamedTransaction]:
        """Every committed transaction the filters (and the caller's scope) let
        through, in position order, for as long as the caller iterates: after
        `after_position`, or `from_now`, or (neither) from the journal's start.

        When the stream fails with a retryable error (UNAVAILABLE: a server
        stopping or restarting, its database unreachable), it reconnects after the
        last position it yielded (or a later checkpoint), with the retry policy's
        backoff; `timeout_s` (default: the client's `total_timeout_s`) bounds the
        reconnecting after one failure, not the stream. Within one iteration each
        transaction comes once. Delivery is at least once across your restarts:
        record `transaction.position` once handled, resume with `after_position`,
        and deduplicate by position (text order is stream order). `on_checkpoint`
        gets the position of each message without transactions (nothing the
        filter lets through committed up to it): record it too, or a quiet
        filter resumes from far back. With `from_now`, a failure before the first
        message (a transaction or a checkpoint) starts from now again: start from
        a position when no transaction may be missed. Raises TooManyStreams,
        PermissionDenied, InvalidArgument, and after the reconnects Unavailable.
        """
        position = after_position
        metadata, request_id = with_request_id(self._metadata, call_metadata)
        attempts: Attempts | None = None  # the reconnects since the last message
        while True:
            request = rq.watch_transactions(
                account_id=account_id,
                account_prefix=account_prefix,
                asset=asset,
                after_position=position,
                from_now=from_now and not position,
            )
            call = self._stub.WatchTransactions(request, metadata=metadata)
            try:
                async for message in call:
                    attempts = None
                    for wire in message.transactions:
                        if position and wire.position <= position:
                            continue  # yielded already: never twice, never backwards
                        position = wire.position
                        yield streamed_transaction_from_pb(wire)
                    if not message.transactions and message.position > position:
                        position = message.position
                        if on_checkpoint is not None:
                            on_checkpoint(position)
                return  # the server ended the stream
            except grpc.RpcError as rpc_error:
                error = error_from_rpc_error(rpc_error, sent_request_id=request_id)
                cause: BaseException = rpc_error
            finally:
                call.cancel()
            if attempts is None:
                attempts = Attempts(self.config, timeout_s, self._rng)
            attempts.next_timeout_s()  # counts the attempt that failed
            pause = attempts.pause_before_retry_s(error)
            if pause is None:
                raise attempts.give_up(error) from cause
            await asyncio.sleep(pause)

    # --- batches --------------------------------------------------------------------

    async def submit_batch(
        self, commands: Iterable[Command], *, atomic: bool = False, timeout_s: float | None = None
    ) -> list[BatchOutcome]:
        """Runs up to 1,000 commands (built with creditledger_client.batch.charge,
        .reserve, .settle, .release, .refund, .grant) in one call, in order; each
        outcome holds the command's result or the error its single call would
        raise, and its own `replayed`. With `atomic`, all or nothing: one failing
        command raises its error for the whole call (`metadata["batch_index"]`
        names it) and nothing is recorded, so a corrected retry with the same
        keys runs. Raises InvalidArgument (the batch's limits), and what any
        call raises (Unavailable after the retries, ...)."""
        request = batch_request(commands, atomic)
        resp, _ = await self._call(self._stub.SubmitBatch, request, timeout_s)
        return outcomes_from_pb(resp)

    def batcher(
        self, *, max_commands: int = 100, max_delay_ms: float = 5.0, timeout_s: float | None = None
    ) -> Batcher:
        """Gathers commands of many callers into SubmitBatch calls of up to
        `max_commands`, sent at latest `max_delay_ms` after the first waiting
        one; each caller gets its own command's outcome (see batch.Batcher)."""
        return Batcher(self, max_commands, max_delay_ms, timeout_s)

    # --- helpers --------------------------------------------------------------------

    def reservation(
        self,
        account_id: str,
        asset: str,
        amount: int,
        *,
        idempotency_key: str | None = None,
        ttl: timedelta | None = None,
        metadata: Mapping[str, str] | None = None,
        on_error: HoldOnError = "settle",
    ) -> AsyncReservation:
        """`async with client.reservation(acct, asset, n, idempotency_key=k) as hold: ...`.

        Reserves on entry (raising InsufficientCredits and the like there). On
        a normal exit settles what `hold.use()` recorded, final (the rest goes
        back to available). On an exception settles what was used just the
        same, unless `on_error="release"` (or `hold.on_error = "release"` in
        the block): then releases the whole hold. The settle and release keys
        derive from the reservation, so a rerun of the block with the same
        `idempotency_key` replays them; if that reservation is already closed,
        `hold.finished` is True and nothing more is settled. Give a key of your
        own (derived from the job) for reruns to be safe across processes.
        """
        return AsyncReservation(
            self, account_id, asset, amount, idempotency_key, ttl, metadata, on_error
        )


class AsyncReservation:
    """The async context manager returned by `LedgerClient.reservation`."""

    def __init__(
        self,
        client: LedgerClient,
        account_id: str,
        asset: str,
        amount: int,
        idempotency_key: str | None,
        ttl: timedelta | None,
        metadata: Mapping[str, str] | None,
        on_error: HoldOnError,
    ) -> None:
        if on_error not in ("settle", "release"):
            raise ValueError(f'on_error is "settle" or "release", got {on_error!r}')
        self._client = client
        self._args = (account_id, asset, amount)
        self._key = idempotency_key
        self._ttl = ttl
        self._metadata = metadata
        self._on_error: HoldOnError = on_error
        self._hold: Hold | None = None

    async def __aenter__(self) -> Hold:
        result = await self._client.reserve(
            *self._args, idempotency_key=self._key, ttl=self._ttl, metadata=self._metadata
        )
        reservation = result.reservation
        if result.replayed:
            # The replay is the reserve's first outcome; what happened since decides.
            reservation = await self._client.get_reservation(reservation.reservation_id)
        self._hold = Hold(reservation, replayed=result.replayed, on_error=self._on_error)
        return self._hold

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        hold = self._hold
        if hold is None:
            raise RuntimeError("reservation context exited without being entered")
        if hold.finished:
            return
        rid = hold.reservation_id
        settle = hold.used > 0 or exc is None
        if exc is not None and hold.on_error == "release":
            settle = False
        try:
            if settle:
                hold.result = await self._client.settle(
                    rid, hold.used, final=True, idempotency_key=settle_key(rid)
                )
            else:
                hold.result = await self._client.release(rid, idempotency_key=release_key(rid))
        except LedgerError as close_error:
            if exc is None:
                raise
            # The block's own exception matters more; a rerun with the same
            # reserve key closes the hold, and its ttl ends it in any case.
            what = "settle" if settle else "release"
            exc.add_note(f"creditledger-client: {what} of {rid} failed: {close_error}")
