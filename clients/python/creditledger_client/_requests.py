"""Request messages for every RPC, built once for both clients.

A mutating request gets its idempotency key here, once: the client then sends
the same message on every retry, so a retry can only ever replay.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

from creditledger.v1 import ledger_pb2 as pb
from google.protobuf import duration_pb2, timestamp_pb2

from creditledger_client.models import (
    CapWindow,
    Comparison,
    GroupLeg,
    Overage,
    PeriodUnit,
    Precondition,
    Rollover,
)


def new_idempotency_key() -> str:
    """A fresh random key (UUID4): unique per logical operation, not per attempt."""
    return str(uuid.uuid4())


def _key(key: str | None) -> str:
    return key if key is not None else new_idempotency_key()


def _duration(value: timedelta | None) -> duration_pb2.Duration | None:
    if value is None:
        return None
    d = duration_pb2.Duration()
    d.FromTimedelta(value)
    return d


def _timestamp(value: datetime | None, name: str = "expires_at") -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware (naive datetimes are ambiguous)")
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def _comparison(value: Comparison | None) -> pb.Comparison | None:
    if value is None:
        return None
    return pb.Comparison(operator=value.operator.value, value=value.value)  # type: ignore[arg-type]


def preconditions(values: Iterable[Precondition]) -> list[pb.Precondition]:
    """The wire form of a mutation's preconditions."""
    wire = []
    for value in values:
        one = pb.Precondition(
            account_id=value.account_id,
            asset=value.asset,
            available=_comparison(value.available),
            held=_comparison(value.held),
        )
        if value.version is not None:
            one.version = value.version
        wire.append(one)
    return wire


def create_account(
    account_id: str, metadata: Mapping[str, str] | None, parent_id: str = ""
) -> pb.CreateAccountRequest:
    return pb.CreateAccountRequest(
        account_id=account_id, metadata=dict(metadata or {}), parent_id=parent_id
    )


def grant(
    account_id: str,
    asset: str,
    amount: int,
    *,
    idempotency_key: str | None,
    metadata: Mapping[str, str] | None,
    expires_at: datetime | None,
    priority: int | None,
    source: str,
    category: str = "",
    unit_cost_micros: int | None = None,
    cost_currency: str = "",
    top_up_request_id: str = "",
    conditions: Iterable[Precondition] = (),
) -> pb.GrantRequest:
    req = pb.GrantRequest(
        account_id=account_id,
        asset=asset,
        amount=amount,
        idempotency_key=_key(idempotency_key),
        metadata=dict(metadata or {}),
        expires_at=_timestamp(expires_at),
        source=source,
        category=category,
        cost_currency=cost_currency,
        top_up_request_id=top_up_request_id,
        preconditions=preconditions(conditions),
    )
    if priority is not None:
        req.priority = priority
    if unit_cost_micros is not None:
        req.unit_cost_micros = unit_cost_micros
    return req


def reserve(
    account_id: str,
    asset: str,
    amount: int,
    *,
    idempotency_key: str | None,
    ttl: timedelta | None,
    metadata: Mapping[str, str] | None,
    overage: Overage = Overage.REJECT,
    conditions: Iterable[Precondition] = (),
) -> pb.ReserveRequest:
    return pb.ReserveRequest(
        account_id=account_id,
        asset=asset,
        amount=amount,
        idempotency_key=_key(idempotency_key),
        ttl=_duration(ttl),
        metadata=dict(metadata or {}),
        overage=overage.value,  # type: ignore[arg-type]
        preconditions=preconditions(conditions),
    )


def reserve_group(
    legs: Iterable[GroupLeg],
    *,
    idempotency_key: str | None,
    ttl: timedelta | None,
    metadata: Mapping[str, str] | None,
    overage: Overage = Overage.REJECT,
    conditions: Iterable[Precondition] = (),
) -> pb.ReserveGroupRequest:
    return pb.ReserveGroupRequest(
        legs=[
            pb.ReserveGroupLeg(
                account_id=leg.account_id, asset=leg.asset, amount=leg.amount, leg_key=leg.leg_key
            )
            for leg in legs
        ],
        idempotency_key=_key(idempotency_key),
        ttl=_duration(ttl),
        metadata=dict(metadata or {}),
        overage=overage.value,  # type: ignore[arg-type]
        preconditions=preconditions(conditions),
    )


def settle(
    reservation_id: str,
    amount: int,
    *,
    final: bool,
    idempotency_key: str | None,
    conditions: Iterable[Precondition] = (),
) -> pb.SettleRequest:
    return pb.SettleRequest(
        reservation_id=reservation_id,
        amount=amount,
        final=final,
        idempotency_key=_key(idempotency_key),
        preconditions=preconditions(conditions),
    )


def release(
    reservation_id: str,
    amount: int,
    *,
    idempotency_key: str | None,
    conditions: Iterable[Precondition] = (),
) -> pb.ReleaseRequest:
    return pb.ReleaseRequest(
        reservation_id=reservation_id,
        amount=amount,
        idempotency_key=_key(idempotency_key),
        preconditions=preconditions(conditions),
    )


def refund(
    reservation_id: str,
    amount: int,
    *,
    reason: str,
    idempotency_key: str | None,
    conditions: Iterable[Precondition] = (),
) -> pb.RefundRequest:
    return pb.RefundRequest(
        reservation_id=reservation_id,
        amount=amount,
        reason=reason,
        idempotency_key=_key(idempotency_key),
        preconditions=preconditions(conditions),
    )


def charge(
    account_id: str,
    asset: str,
    amount: int,
    *,
    idempotency_key: str | None,
    metadata: Mapping[str, str] | None,
    overage: Overage = Overage.REJECT,
    conditions: Iterable[Precondition] = (),
) -> pb.ChargeRequest:
    return pb.ChargeRequest(
        account_id=account_id,
        asset=asset,
        amount=amount,
        idempotency_key=_key(idempotency_key),
        metadata=dict(metadata or {}),
        overage=overage.value,  # type: ignore[arg-type]
        preconditions=preconditions(conditions),
    )


def get_balance(
    account_id: str,
    asset: str,
    *,
    expiring_within: timedelta | None,
    include_lots: bool,
    as_of_time: datetime | None = None,
    as_of_position: str = "",
) -> pb.GetBalanceRequest:
    return pb.GetBalanceRequest(
        account_id=account_id,
        asset=asset,
        expiring_within=_duration(expiring_within),
        include_lots=include_lots,
        as_of_time=_timestamp(as_of_time, "as_of_time"),
        as_of_position=as_of_position,
    )


def list_entries(
    account_id: str, *, asset: str, page_size: int, page_token: str
) -> pb.ListEntriesRequest:
    return pb.ListEntriesRequest(
        account_id=account_id, asset=asset, page_size=page_size, page_token=page_token
    )


def list_reservations(
    account_id: str, *, asset: str, state: int, page_size: int, page_token: str
) -> pb.ListReservationsRequest:
    return pb.ListReservationsRequest(
        account_id=account_id,
        asset=asset,
        state=state,  # type: ignore[arg-type]
        page_size=page_size,
        page_token=page_token,
    )


# --- spending policies ---------------------------------------------------------------


def set_spending_limits(
    account_id: str,
    asset: str,
    floor: int,
    *,
    idempotency_key: str | None,
    conditions: Iterable[Precondition] = (),
) -> pb.SetSpendingLimitsRequest:
    return pb.SetSpendingLimitsRequest(
        account_id=account_id,
        asset=asset,
        floor=floor,
        idempotency_key=_key(idempotency_key),
        preconditions=preconditions(conditions),
    )


def set_member_cap(
    account_id: str,
    asset: str,
    window: CapWindow,
    cap: int | None,
    *,
    idempotency_key: str | None,
    conditions: Iterable[Precondition] = (),
) -> pb.SetMemberCapRequest:
    req = pb.SetMemberCapRequest(
        account_id=account_id,
        asset=asset,
        window=window.value,  # type: ignore[arg-type]
        idempotency_key=_key(idempotency_key),
        preconditions=preconditions(conditions),
    )
    if cap is not None:
        req.cap = cap
    return req


# --- provenance and grant schedules ---------------------------------------------------


def void_grant(
    lot_id: str, amount: int, *, reason: str, idempotency_key: str | None
) -> pb.VoidGrantRequest:
    return pb.VoidGrantRequest(
        lot_id=lot_id, amount=amount, reason=reason, idempotency_key=_key(idempotency_key)
    )


def rollover(value: Rollover | None) -> pb.Rollover | None:
    """The wire form of a schedule's rollover."""
    if value is None:
        return None
    wire = pb.Rollover(life=_duration(value.life))
    if value.cap_amount is not None:
        wire.cap_amount = value.cap_amount
    if value.cap_percent is not None:
        wire.cap_percent = value.cap_percent
    if value.priority is not None:
        wire.priority = value.priority
    return wire


def create_grant_schedule(
    account_id: str,
    asset: str,
    amount: int,
    period_unit: PeriodUnit,
    period_count: int,
    *,
    anchor: datetime | None,
    time_zone: str,
    end: datetime | None,
    priority: int | None,
    category: str,
    lot_life: timedelta | None,
    rollover_: Rollover | None,
    idempotency_key: str | None,
    metadata: Mapping[str, str] | None,
) -> pb.CreateGrantScheduleRequest:
    req = pb.CreateGrantScheduleRequest(
        account_id=account_id,
        asset=asset,
        amount=amount,
        period_unit=period_unit.value,  # type: ignore[arg-type]
        period_count=period_count,
        anchor=_timestamp(anchor, "anchor"),
        time_zone=time_zone,
        end=_timestamp(end, "end"),
        category=category,
        lot_life=_duration(lot_life),
        rollover=rollover(rollover_),
        idempotency_key=_key(idempotency_key),
        metadata=dict(metadata or {}),
    )
    if priority is not None:
        req.priority = priority
    return req


def update_grant_schedule(
    schedule_id: str,
    *,
    amount: int | None,
    rollover_: Rollover | None,
    remove_rollover: bool,
    idempotency_key: str | None,
) -> pb.UpdateGrantScheduleRequest:
    req = pb.UpdateGrantScheduleRequest(
        schedule_id=schedule_id,
        rollover=rollover(rollover_),
        remove_rollover=remove_rollover,
        idempotency_key=_key(idempotency_key),
    )
    if amount is not None:
        req.amount = amount
    return req


def cancel_grant_schedule(
    schedule_id: str, *, void_remainder: bool, idempotency_key: str | None
) -> pb.CancelGrantScheduleRequest:
    return pb.CancelGrantScheduleRequest(
        schedule_id=schedule_id,
        void_remainder=void_remainder,
        idempotency_key=_key(idempotency_key),
    )


def get_breakage(
    account_id: str, asset: str, *, start: datetime | None, end: datetime | None
) -> pb.GetBreakageRequest:
    return pb.GetBreakageRequest(
        account_id=account_id,
        asset=asset,
        start=_timestamp(start, "start"),
        end=_timestamp(end, "end"),
    )


# --- statements, alerts, the change stream ---------------------------------------------


def get_statement(
    account_id: str,
    asset: str,
    from_time: datetime,
    to_time: datetime,
    *,
    page_size: int,
    page_token: str,
) -> pb.GetStatementRequest:
    return pb.GetStatementRequest(
        account_id=account_id,
        asset=asset,
        from_time=_timestamp(from_time, "from_time"),
        to_time=_timestamp(to_time, "to_time"),
        page_size=page_size,
        page_token=page_token,
    )


def set_balance_alert(
    account_id: str, asset: str, threshold: int, *, recovery: int, percent: bool
) -> pb.SetBalanceAlertRequest:
    return pb.SetBalanceAlertRequest(
        account_id=account_id,
        asset=asset,
        threshold=threshold,
        recovery=recovery,
        percent=percent,
    )


def watch_transactions(
    *, account_id: str, account_prefix: str, asset: str, after_position: str, from_now: bool
) -> pb.WatchTransactionsRequest:
    return pb.WatchTransactionsRequest(
        account_id=account_id,
        account_prefix=account_prefix,
        asset=asset,
        after_position=after_position,
        from_now=from_now,
    )
