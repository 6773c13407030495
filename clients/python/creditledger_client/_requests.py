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

from creditledger_client.models import GroupLeg, Overage


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


def _timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("expires_at must be timezone-aware (naive datetimes are ambiguous)")
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def create_account(account_id: str, metadata: Mapping[str, str] | None) -> pb.CreateAccountRequest:
    return pb.CreateAccountRequest(account_id=account_id, metadata=dict(metadata or {}))


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
) -> pb.ReserveRequest:
    return pb.ReserveRequest(
        account_id=account_id,
        asset=asset,
        amount=amount,
        idempotency_key=_key(idempotency_key),
        ttl=_duration(ttl),
        metadata=dict(metadata or {}),
        overage=overage.value,  # type: ignore[arg-type]
    )


def reserve_group(
    legs: Iterable[GroupLeg],
    *,
    idempotency_key: str | None,
    ttl: timedelta | None,
    metadata: Mapping[str, str] | None,
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
    )


def settle(
    reservation_id: str, amount: int, *, final: bool, idempotency_key: str | None
) -> pb.SettleRequest:
    return pb.SettleRequest(
        reservation_id=reservation_id,
        amount=amount,
        final=final,
        idempotency_key=_key(idempotency_key),
    )


def release(reservation_id: str, amount: int, *, idempotency_key: str | None) -> pb.ReleaseRequest:
    return pb.ReleaseRequest(
        reservation_id=reservation_id, amount=amount, idempotency_key=_key(idempotency_key)
    )


def refund(
    reservation_id: str, amount: int, *, reason: str, idempotency_key: str | None
) -> pb.RefundRequest:
    return pb.RefundRequest(
        reservation_id=reservation_id,
        amount=amount,
        reason=reason,
        idempotency_key=_key(idempotency_key),
    )


def charge(
    account_id: str,
    asset: str,
    amount: int,
    *,
    idempotency_key: str | None,
    metadata: Mapping[str, str] | None,
    overage: Overage = Overage.REJECT,
) -> pb.ChargeRequest:
    return pb.ChargeRequest(
        account_id=account_id,
        asset=asset,
        amount=amount,
        idempotency_key=_key(idempotency_key),
        metadata=dict(metadata or {}),
        overage=overage.value,  # type: ignore[arg-type]
    )


def get_balance(
    account_id: str, asset: str, *, expiring_within: timedelta | None, include_lots: bool
) -> pb.GetBalanceRequest:
    return pb.GetBalanceRequest(
        account_id=account_id,
        asset=asset,
        expiring_within=_duration(expiring_within),
        include_lots=include_lots,
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
