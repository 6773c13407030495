"""LedgerService RPCs: request message in, (response message, replayed) out.

Errors are raised as ledger errors; ledger.transport.server turns them into
statuses (ledger.transport.status) and counts and logs every call.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from creditledger.v1 import ledger_pb2 as pb

from ledger.domain import commands as c
from ledger.domain import limits
from ledger.domain.access import LOCAL, Access
from ledger.domain.errors import InvariantViolation, LedgerError
from ledger.domain.model import (
    GrantResult,
    GroupResult,
    LimitsResult,
    ReservationResult,
    Result,
    ScheduleResult,
    StreamTransaction,
    VoidResult,
)
from ledger.service.ledger import Ledger
from ledger.service.listing import ReservationQuery
from ledger.service.stream import StreamMessage
from ledger.transport import convert, status

Reply = tuple[Any, bool]
# Stream messages kept for other streams that send the same page (two per
# cached page: ledger.service.stream keeps _PAGE_CACHE_MAX of them).
_SENT_CACHE_MAX = 16
Authorize = Callable[[grpc.aio.ServicerContext[Any, Any]], Access]
"""The caller of a call: its id (which scopes idempotency keys), rights and scope.
Raises Unauthenticated when there is none (ledger.transport.auth)."""


def local_access(context: grpc.aio.ServicerContext[Any, Any]) -> Access:
    """Without a caller file every call is the one local caller, with every right."""
    return LOCAL


def _reservation_reply(result: Result, response: type[Any]) -> Any:
    if not isinstance(result, ReservationResult):
        raise InvariantViolation(f"expected a reservation result, got {type(result).__name__}")
    reply = response()
    _fill_reservation_reply(reply, result)
    return reply


def _fill_reservation_reply(reply: Any, result: ReservationResult) -> None:
    """In place: nested messages given to a constructor are copied (see _batch_response)."""
    convert.fill_reservation(reply.reservation, result.reservation)
    convert.fill_balance(reply.balance, result.balance)
    if type(reply) in _TAKES:
        reply.taken = result.reservation.amount  # what was taken (CAP: possibly less, or 0)


class LedgerServicer:
    def __init__(self, ledger: Ledger, authorize: Authorize = local_access) -> None:
        self._ledger = ledger
        self._authorize = authorize
        self._sent: OrderedDict[int, tuple[list[StreamTransaction], bytes]] = OrderedDict()

    def methods(
        self,
    ) -> dict[str, tuple[Callable[[Any, Any], Awaitable[Reply]], type[Any], type[Any]]]:
        """RPC name -> (implementation, request class, response class)."""
        return {
            "CreateAccount": (
                self.create_account,
                pb.CreateAccountRequest,
                pb.CreateAccountResponse,
            ),
            "GetAccount": (self.get_account, pb.GetAccountRequest, pb.GetAccountResponse),
            "Grant": (self.grant, pb.GrantRequest, pb.GrantResponse),
            "Reserve": (self.reserve, pb.ReserveRequest, pb.ReserveResponse),
            "ReserveGroup": (self.reserve_group, pb.ReserveGroupRequest, pb.ReserveGroupResponse),
            "Settle": (self.settle, pb.SettleRequest, pb.SettleResponse),
            "Release": (self.release, pb.ReleaseRequest, pb.ReleaseResponse),
            "Refund": (self.refund, pb.RefundRequest, pb.RefundResponse),
            "Charge": (self.charge, pb.ChargeRequest, pb.ChargeResponse),
            "GetReservation": (
                self.get_reservation,
                pb.GetReservationRequest,
                pb.GetReservationResponse,
            ),
            "GetReservationGroup": (
                self.get_reservation_group,
                pb.GetReservationGroupRequest,
                pb.GetReservationGroupResponse,
            ),
            "GetBalance": (self.get_balance, pb.GetBalanceRequest, pb.GetBalanceResponse),
            "ListEntries": (self.list_entries, pb.ListEntriesRequest, pb.ListEntriesResponse),
            "ListReservations": (
                self.list_reservations,
                pb.ListReservationsRequest,
                pb.ListReservationsResponse,
            ),
            "SubmitBatch": (self.submit_batch, pb.SubmitBatchRequest, pb.SubmitBatchResponse),
            "SetSpendingLimits": (
                self.set_spending_limits,
                pb.SetSpendingLimitsRequest,
                pb.SetSpendingLimitsResponse,
            ),
            "SetMemberCap": (self.set_member_cap, pb.SetMemberCapRequest, pb.SetMemberCapResponse),
            "VoidGrant": (self.void_grant, pb.VoidGrantRequest, pb.VoidGrantResponse),
            "CreateGrantSchedule": (
                self.create_grant_schedule,
                pb.CreateGrantScheduleRequest,
                pb.CreateGrantScheduleResponse,
            ),
            "GetGrantSchedule": (
                self.get_grant_schedule,
                pb.GetGrantScheduleRequest,
                pb.GetGrantScheduleResponse,
            ),
            "ListGrantSchedules": (
                self.list_grant_schedules,
                pb.ListGrantSchedulesRequest,
                pb.ListGrantSchedulesResponse,
            ),
            "UpdateGrantSchedule": (
                self.update_grant_schedule,
                pb.UpdateGrantScheduleRequest,
                pb.UpdateGrantScheduleResponse,
            ),
            "GetBreakage": (self.get_breakage, pb.GetBreakageRequest, pb.GetBreakageResponse),
            "CancelGrantSchedule": (
                self.cancel_grant_schedule,
                pb.CancelGrantScheduleRequest,
                pb.CancelGrantScheduleResponse,
            ),
            "GetStatement": (self.get_statement, pb.GetStatementRequest, pb.GetStatementResponse),
            "SetBalanceAlert": (
                self.set_balance_alert,
                pb.SetBalanceAlertRequest,
                pb.SetBalanceAlertResponse,
            ),
            "ListBalanceAlerts": (
                self.list_balance_alerts,
                pb.ListBalanceAlertsRequest,
                pb.ListBalanceAlertsResponse,
            ),
            "DeleteBalanceAlert": (
                self.delete_balance_alert,
                pb.DeleteBalanceAlertRequest,
                pb.DeleteBalanceAlertResponse,
            ),
        }

    async def create_account(self, req: pb.CreateAccountRequest, ctx: Any) -> Reply:
        account = await self._ledger.create_account(
            req.account_id, dict(req.metadata), self._authorize(ctx), req.parent_id
        )
        return pb.CreateAccountResponse(account=convert.account(account)), False

    async def get_account(self, req: pb.GetAccountRequest, ctx: Any) -> Reply:
        account = await self._ledger.get_account(req.account_id, self._authorize(ctx))
        return pb.GetAccountResponse(account=convert.account(account)), False

    async def grant(self, req: pb.GrantRequest, ctx: Any) -> Reply:
        access = self._authorize(ctx)
        result, replayed = await self._ledger.execute(convert.grant(req, access.caller), access)
        if not isinstance(result, GrantResult):
            raise InvariantViolation("Grant returned no GrantResult")
        return pb.GrantResponse(
            balance=convert.balance(result.balance), lot=convert.lot(result.lot)
        ), replayed

    async def void_grant(self, req: pb.VoidGrantRequest, ctx: Any) -> Reply:
        access = self._authorize(ctx)
        result, replayed = await self._ledger.execute(
            convert.void_grant(req, access.caller), access
        )
        if not isinstance(result, VoidResult):
            raise InvariantViolation("VoidGrant returned no VoidResult")
        return pb.VoidGrantResponse(
            lot=convert.lot(result.lot),
            balance=convert.balance(result.balance),
            voided=result.voided,
        ), replayed

    async def create_grant_schedule(self, req: pb.CreateGrantScheduleRequest, ctx: Any) -> Reply:
        access = self._authorize(ctx)
        cmd = convert.create_grant_schedule(req, access.caller)
        result, replayed = await self._ledger.execute(cmd, access)
        if not isinstance(result, ScheduleResult) or result.balance is None:
            raise InvariantViolation("CreateGrantSchedule returned no ScheduleResult")
        return pb.CreateGrantScheduleResponse(
            schedule=convert.schedule(result.schedule), balance=convert.balance(result.balance)
        ), replayed

    async def update_grant_schedule(self, req: pb.UpdateGrantScheduleRequest, ctx: Any) -> Reply:
        access = self._authorize(ctx)
        cmd = convert.update_grant_schedule(req, access.caller)
        result, replayed = await self._ledger.execute(cmd, access)
        if not isinstance(result, ScheduleResult):
            raise InvariantViolation("UpdateGrantSchedule returned no ScheduleResult")
        return pb.UpdateGrantScheduleResponse(schedule=convert.schedule(result.schedule)), replayed

    async def cancel_grant_schedule(self, req: pb.CancelGrantScheduleRequest, ctx: Any) -> Reply:
        access = self._authorize(ctx)
        cmd = convert.cancel_grant_schedule(req, access.caller)
        result, replayed = await self._ledger.execute(cmd, access)
        if not isinstance(result, ScheduleResult) or result.balance is None:
            raise InvariantViolation("CancelGrantSchedule returned no ScheduleResult")
        return pb.CancelGrantScheduleResponse(
            schedule=convert.schedule(result.schedule), balance=convert.balance(result.balance)
        ), replayed

    async def list_grant_schedules(self, req: pb.ListGrantSchedulesRequest, ctx: Any) -> Reply:
        found, token = await self._ledger.list_grant_schedules(
            req.account_id, req.page_size, req.page_token, self._authorize(ctx)
        )
        return pb.ListGrantSchedulesResponse(
            schedules=[convert.schedule(s) for s in found], next_page_token=token
        ), False

    async def get_breakage(self, req: pb.GetBreakageRequest, ctx: Any) -> Reply:
        lines = await self._ledger.get_breakage(
            req.account_id,
            req.asset,
            convert.timestamp(req.start, req.HasField("start"), "start"),
            convert.timestamp(req.end, req.HasField("end"), "end"),
            self._authorize(ctx),
        )
        # Saturating at INT64_MAX, as lifetime totals do (10^15 credits x 10^12 micros).
        out = pb.GetBreakageResponse(credits=min(sum(x.credits for x in lines), limits.INT64_MAX))
        for x in lines:
            line = out.lines.add(
                category=x.category,
                cost_currency=x.cost_currency,
                credits=min(x.credits, limits.INT64_MAX),
                cost_micros=min(x.cost_micros, limits.INT64_MAX),
            )
            if x.unit_cost_micros is not None:
                line.unit_cost_micros = x.unit_cost_micros
        return out, False

    async def get_grant_schedule(self, req: pb.GetGrantScheduleRequest, ctx: Any) -> Reply:
        found = await self._ledger.get_grant_schedule(req.schedule_id, self._authorize(ctx))
        return pb.GetGrantScheduleResponse(schedule=convert.schedule(found)), False

    async def reserve(self, req: pb.ReserveRequest, ctx: Any) -> Reply:
        access = self._authorize(ctx)
        result, replayed = await self._ledger.execute(convert.reserve(req, access.caller), access)
        return _reservation_reply(result, pb.ReserveResponse), replayed

    async def reserve_group(self, req: pb.ReserveGroupRequest, ctx: Any) -> Reply:
        access = self._authorize(ctx)
        result, replayed = await self._ledger.execute(
            convert.reserve_group(req, access.caller), access
        )
        if not isinstance(result, GroupResult):
            raise InvariantViolation("ReserveGroup returned no GroupResult")
        group = pb.ReservationGroup(
            group_id=result.group_id,
            reservations=[convert.reservation(r) for r in result.reservations],
        )
        return pb.ReserveGroupResponse(
            group=group, balances=[convert.balance(b) for b in result.balances]
        ), replayed

    async def settle(self, req: pb.SettleRequest, ctx: Any) -> Reply:
        access = self._authorize(ctx)
        result, replayed = await self._ledger.execute(convert.settle(req, access.caller), access)
        return _reservation_reply(result, pb.SettleResponse), replayed

    async def release(self, req: pb.ReleaseRequest, ctx: Any) -> Reply:
        access = self._authorize(ctx)
        result, replayed = await self._ledger.execute(convert.release(req, access.caller), access)
        return _reservation_reply(result, pb.ReleaseResponse), replayed

    async def refund(self, req: pb.RefundRequest, ctx: Any) -> Reply:
        access = self._authorize(ctx)
        result, replayed = await self._ledger.execute(convert.refund(req, access.caller), access)
        return _reservation_reply(result, pb.RefundResponse), replayed

    async def charge(self, req: pb.ChargeRequest, ctx: Any) -> Reply:
        access = self._authorize(ctx)
        result, replayed = await self._ledger.execute(convert.charge(req, access.caller), access)
        return _reservation_reply(result, pb.ChargeResponse), replayed

    async def set_spending_limits(self, req: pb.SetSpendingLimitsRequest, ctx: Any) -> Reply:
        access = self._authorize(ctx)
        result, replayed = await self._ledger.execute(
            convert.set_spending_limits(req, access.caller), access
        )
        if not isinstance(result, LimitsResult):
            raise InvariantViolation("SetSpendingLimits returned no LimitsResult")
        return pb.SetSpendingLimitsResponse(balance=convert.balance(result.balance)), replayed

    async def set_member_cap(self, req: pb.SetMemberCapRequest, ctx: Any) -> Reply:
        access = self._authorize(ctx)
        result, replayed = await self._ledger.execute(
            convert.set_member_cap(req, access.caller), access
        )
        if not isinstance(result, LimitsResult):
            raise InvariantViolation("SetMemberCap returned no LimitsResult")
        return pb.SetMemberCapResponse(balance=convert.balance(result.balance)), replayed

    async def get_reservation(self, req: pb.GetReservationRequest, ctx: Any) -> Reply:
        res = await self._ledger.get_reservation(req.reservation_id, self._authorize(ctx))
        return pb.GetReservationResponse(reservation=convert.reservation(res)), False

    async def get_reservation_group(self, req: pb.GetReservationGroupRequest, ctx: Any) -> Reply:
        group = await self._ledger.get_group(req.group_id, self._authorize(ctx))
        return pb.GetReservationGroupResponse(
            group=pb.ReservationGroup(
                group_id=group.group_id,
                reservations=[convert.reservation(r) for r in group.reservations],
            )
        ), False

    async def get_balance(self, req: pb.GetBalanceRequest, ctx: Any) -> Reply:
        view = await self._ledger.get_balance(
            req.account_id,
            req.asset,
            convert.duration_s(req.expiring_within, req.HasField("expiring_within")),
            req.include_lots,
            self._authorize(ctx),
            convert.timestamp(req.as_of_time, req.HasField("as_of_time"), "as_of_time"),
            req.as_of_position,
        )
        return pb.GetBalanceResponse(
            balance=convert.balance(view.balance),
            expiring_amount=view.expiring_amount,
            lots=[convert.lot(lt) for lt in view.lots],
            funded_by=view.funded_by,
            may_spend=view.may_spend,
            caps=[convert.cap_view(cap) for cap in view.caps],
        ), False

    async def set_balance_alert(self, req: pb.SetBalanceAlertRequest, ctx: Any) -> Reply:
        alert = await self._ledger.set_alert(
            req.account_id,
            req.asset,
            req.threshold,
            req.recovery,
            req.percent,
            self._authorize(ctx),
            req.top_up_target,
            req.top_up_monthly_cap,
        )
        return pb.SetBalanceAlertResponse(alert=convert.alert(alert)), False

    async def list_balance_alerts(self, req: pb.ListBalanceAlertsRequest, ctx: Any) -> Reply:
        found = await self._ledger.list_alerts(req.account_id, self._authorize(ctx))
        return pb.ListBalanceAlertsResponse(alerts=[convert.alert(a) for a in found]), False

    async def delete_balance_alert(self, req: pb.DeleteBalanceAlertRequest, ctx: Any) -> Reply:
        deleted = await self._ledger.delete_alert(req.account_id, req.asset, self._authorize(ctx))
        return pb.DeleteBalanceAlertResponse(deleted=deleted), False

    async def get_statement(self, req: pb.GetStatementRequest, ctx: Any) -> Reply:
        found = await self._ledger.get_statement(
            req.account_id,
            req.asset,
            convert.timestamp(req.from_time, req.HasField("from_time"), "from_time"),
            convert.timestamp(req.to_time, req.HasField("to_time"), "to_time"),
            req.page_size,
            req.page_token,
            self._authorize(ctx),
        )
        return convert.statement(found), False

    async def list_entries(self, req: pb.ListEntriesRequest, ctx: Any) -> Reply:
        page = await self._ledger.list_entries(
            req.account_id, req.asset, req.page_size, req.page_token, self._authorize(ctx)
        )
        return pb.ListEntriesResponse(
            entries=[convert.entry(e) for e in page.entries], next_page_token=page.next_page_token
        ), False

    async def list_reservations(self, req: pb.ListReservationsRequest, ctx: Any) -> Reply:
        query = ReservationQuery(req.account_id, req.asset, convert.state_filter(req.state))
        page = await self._ledger.list_reservations(
            query, req.page_size, req.page_token, self._authorize(ctx)
        )
        return pb.ListReservationsResponse(
            reservations=[convert.reservation(r) for r in page.reservations],
            next_page_token=page.next_page_token,
        ), False

    def streams(
        self,
    ) -> dict[str, tuple[Callable[[Any, Any], AsyncIterator[Any]], type[Any], type[Any]]]:
        """Server-streaming RPC name -> (implementation, request class, response class)."""
        return {
            "WatchTransactions": (
                self.watch_transactions,
                pb.WatchTransactionsRequest,
                pb.WatchTransactionsResponse,
            )
        }

    async def watch_transactions(
        self, req: pb.WatchTransactionsRequest, ctx: Any
    ) -> AsyncIterator[bytes]:
        """Serialized messages: one transaction is serialized once for every stream
        that sends it (the handler passes bytes through)."""
        messages = self._ledger.stream.watch(
            req.account_id,
            req.account_prefix,
            req.asset,
            req.after_position,
            req.from_now,
            self._authorize(ctx),
        )
        async for msg in messages:
            yield self._streamed(msg)

    def _streamed(self, msg: StreamMessage) -> bytes:
        """The message for a transaction, made once for every stream that sends it
        (streams with one filter share their pages: ledger.service.stream)."""
        if not msg.transactions:
            return convert.streamed(msg).SerializeToString()
        key = id(msg.transactions)
        found = self._sent.get(key)
        if found is not None and found[0] is msg.transactions:
            return found[1]
        reply = convert.streamed(msg).SerializeToString()
        self._sent[key] = (msg.transactions, reply)  # the list kept: its id stays its own
        while len(self._sent) > _SENT_CACHE_MAX:
            self._sent.popitem(last=False)
        return reply

    async def submit_batch(self, req: pb.SubmitBatchRequest, ctx: Any) -> Reply:
        access = self._authorize(ctx)
        batch = convert.batch(req, access.caller)
        result = await self._ledger.execute_batch(batch, access)
        # The call's own trailer says nothing of replays: each outcome carries its own flag.
        return _batch_response(batch.commands, result.outcomes), False


def _batch_response(
    cmds: tuple[c.BatchCommand, ...],
    outcomes: tuple[tuple[GrantResult | ReservationResult | LedgerError, bool], ...],
) -> pb.SubmitBatchResponse:
    """Built in place (`outcomes.add`): a message passed to a constructor is copied,
    and three nested copies per command cost more than the rest of the reply."""
    response = pb.SubmitBatchResponse()
    add = response.outcomes.add
    for cmd, (outcome, replayed) in zip(cmds, outcomes, strict=True):
        if isinstance(outcome, LedgerError):
            add(error=status.status_message(outcome), replayed=replayed)
        elif isinstance(outcome, GrantResult):
            reply = pb.GrantResponse(
                balance=convert.balance(outcome.balance), lot=convert.lot(outcome.lot)
            )
            add(grant=reply, replayed=replayed)
        else:
            if not isinstance(outcome, ReservationResult):
                raise InvariantViolation(
                    f"expected a reservation result, got {type(outcome).__name__}"
                )
            _fill_reservation_reply(getattr(add(replayed=replayed), _FIELD_OF[cmd.method]), outcome)
    return response


_TAKES = (pb.ReserveResponse, pb.ChargeResponse)

# The SubmitBatchResponse outcome's field of each reservation command's reply.
_FIELD_OF = {
    "Charge": "charge",
    "Reserve": "reserve",
    "Settle": "settle",
    "Release": "release",
    "Refund": "refund",
}
