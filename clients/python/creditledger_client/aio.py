"""LedgerClient: the asyncio client (grpc.aio)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
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
    BalanceView,
    Entry,
    EntryPage,
    GrantResult,
    GroupLeg,
    Overage,
    Reservation,
    ReservationGroup,
    ReservationPage,
    ReservationResult,
    ReservationState,
    ReserveGroupResult,
    account_from_pb,
    balance_from_pb,
    entry_from_pb,
    group_from_pb,
    lot_from_pb,
    reservation_from_pb,
    reservation_result,
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
        exist_ok: bool = False,
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> Account:
        """Creates an account. Raises AccountExists (unless exist_ok: then returns it), InvalidArgument.

        CreateAccount has no idempotency key: with exist_ok=True a retried
        create that had in fact succeeded reads as success.
        """
        try:
            resp, _ = await self._call(
                self._stub.CreateAccount,
                rq.create_account(account_id, metadata),
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
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> GrantResult:
        """Adds `amount` as a new lot, of `category` (default paid) with an optional
        cost basis; with `top_up_request_id` (a TOP_UP_REQUESTED event's request_id)
        it settles that top-up request. Raises AccountNotFound, BalanceLimitExceeded,
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
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> ReservationResult:
        """Holds `amount`, all or nothing (REJECT); CAP holds what there is, up to it
        (the reservation's amount says how much); DEBT may go below zero down to the
        floor. Raises InsufficientCredits, CapExceeded, AccountNotFound,
        IdempotencyKeyReused, InvalidArgument."""
        request = rq.reserve(
            account_id,
            asset,
            amount,
            idempotency_key=idempotency_key,
            ttl=ttl,
            metadata=metadata,
            overage=overage,
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
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> ReserveGroupResult:
        """Holds every leg or none. Raises InsufficientCredits (with leg_key),
        AccountNotFound, IdempotencyKeyReused, InvalidArgument."""
        request = rq.reserve_group(
            legs, idempotency_key=idempotency_key, ttl=ttl, metadata=metadata
        )
        resp, replayed = await self._call(
            self._stub.ReserveGroup, request, timeout_s, call_metadata
        )
        return ReserveGroupResult(group_from_pb(resp.group), replayed)

    async def settle(
        self,
        reservation_id: str,
        amount: int,
        *,
        final: bool = False,
        idempotency_key: str | None = None,
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> ReservationResult:
        """Consumes `amount` of the hold; `final` releases the rest. Raises
        ReservationNotFound, ReservationClosed, ReservationExpired,
        AmountExceedsRemaining, IdempotencyKeyReused, InvalidArgument."""
        request = rq.settle(reservation_id, amount, final=final, idempotency_key=idempotency_key)
        resp, replayed = await self._call(self._stub.Settle, request, timeout_s, call_metadata)
        return reservation_result(resp, replayed)

    async def release(
        self,
        reservation_id: str,
        amount: int = 0,
        *,
        idempotency_key: str | None = None,
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> ReservationResult:
        """Gives `amount` (0: all that remains) back to available. Raises
        ReservationNotFound, ReservationClosed, ReservationExpired,
        AmountExceedsRemaining, IdempotencyKeyReused, InvalidArgument."""
        request = rq.release(reservation_id, amount, idempotency_key=idempotency_key)
        resp, replayed = await self._call(self._stub.Release, request, timeout_s, call_metadata)
        return reservation_result(resp, replayed)

    async def refund(
        self,
        reservation_id: str,
        amount: int,
        *,
        reason: str = "",
        idempotency_key: str | None = None,
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> ReservationResult:
        """Gives settled credits back. Raises ReservationNotFound,
        AmountExceedsSettled, IdempotencyKeyReused, InvalidArgument."""
        request = rq.refund(reservation_id, amount, reason=reason, idempotency_key=idempotency_key)
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
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> ReservationResult:
        """Reserve and final Settle in one step (overage as reserve()). Raises
        InsufficientCredits, CapExceeded, AccountNotFound, IdempotencyKeyReused,
        InvalidArgument."""
        request = rq.charge(
            account_id,
            asset,
            amount,
            idempotency_key=idempotency_key,
            metadata=metadata,
            overage=overage,
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
        timeout_s: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> BalanceView:
        """One balance (zeros for an asset never granted). Raises AccountNotFound."""
        request = rq.get_balance(
            account_id, asset, expiring_within=expiring_within, include_lots=include_lots
        )
        resp, _ = await self._call(self._stub.GetBalance, request, timeout_s, call_metadata)
        lots = tuple(lot_from_pb(lot) for lot in resp.lots)
        return BalanceView(balance_from_pb(resp.balance), resp.expiring_amount, lots)

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
