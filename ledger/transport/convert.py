"""Protobuf messages to domain commands, and domain values to messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from creditledger.v1 import ledger_pb2 as pb
from google.protobuf import duration_pb2, timestamp_pb2

from ledger.domain import commands as c
from ledger.domain import limits
from ledger.domain.errors import FieldViolation, InvalidArgument
from ledger.domain.model import (
    Account,
    AlertEventKind,
    AlertState,
    Balance,
    BalanceAlert,
    Bucket,
    Entry,
    Lot,
    Movement,
    Reservation,
    ReservationState,
    StreamTransaction,
)
from ledger.service.statement import Statement
from ledger.service.stream import StreamMessage, encode_position

_STATE = {
    ReservationState.OPEN: pb.Reservation.STATE_OPEN,
    ReservationState.CLOSED: pb.Reservation.STATE_CLOSED,
    ReservationState.EXPIRED: pb.Reservation.STATE_EXPIRED,
}
_MOVEMENT = {
    Movement.GRANT: pb.Entry.MOVEMENT_GRANT,
    Movement.RESERVE: pb.Entry.MOVEMENT_RESERVE,
    Movement.SETTLE: pb.Entry.MOVEMENT_SETTLE,
    Movement.RELEASE: pb.Entry.MOVEMENT_RELEASE,
    Movement.REFUND: pb.Entry.MOVEMENT_REFUND,
    Movement.RESERVATION_EXPIRY: pb.Entry.MOVEMENT_RESERVATION_EXPIRY,
    Movement.LOT_EXPIRY: pb.Entry.MOVEMENT_LOT_EXPIRY,
}
_BUCKET = {
    Bucket.AVAILABLE: pb.Entry.BUCKET_AVAILABLE,
    Bucket.HELD: pb.Entry.BUCKET_HELD,
    Bucket.SYSTEM: pb.Entry.BUCKET_SYSTEM,
}


def _invalid(field: str, description: str) -> InvalidArgument:
    return InvalidArgument([FieldViolation(field, description)])


def duration_s(msg: duration_pb2.Duration, present: bool) -> float | None:
    if not present:
        return None
    return msg.seconds + msg.nanos / 1e9


def timestamp(msg: timestamp_pb2.Timestamp, present: bool, field: str) -> datetime | None:
    if not present:
        return None
    try:
        return msg.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise _invalid(field, "is not a valid timestamp") from exc


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)


def _ts(value: datetime) -> timestamp_pb2.Timestamp:
    # Integer arithmetic: Timestamp.FromDatetime was a visible share of reply time.
    return timestamp_pb2.Timestamp(
        seconds=(value - _EPOCH) // _SECOND, nanos=value.microsecond * 1000
    )


# ---- requests -> commands


def grant(req: pb.GrantRequest, caller: str) -> c.Grant:
    return c.Grant(
        caller,
        req.idempotency_key,
        req.account_id,
        req.asset,
        req.amount,
        dict(req.metadata),
        timestamp(req.expires_at, req.HasField("expires_at"), "expires_at"),
        req.priority if req.HasField("priority") else limits.PRIORITY_DEFAULT,
        req.source,
    )


def reserve(req: pb.ReserveRequest, caller: str) -> c.Reserve:
    return c.Reserve(
        caller,
        req.idempotency_key,
        req.account_id,
        req.asset,
        req.amount,
        duration_s(req.ttl, req.HasField("ttl")),
        dict(req.metadata),
    )


def reserve_group(req: pb.ReserveGroupRequest, caller: str) -> c.ReserveGroup:
    if len(req.legs) > limits.GROUP_LEGS_MAX:
        raise _invalid("legs", f"must have 1 to {limits.GROUP_LEGS_MAX} legs (GROUP_LEGS_MAX)")
    legs = tuple(c.Leg(leg.account_id, leg.asset, leg.amount, leg.leg_key) for leg in req.legs)
    return c.ReserveGroup(
        caller,
        req.idempotency_key,
        legs,
        duration_s(req.ttl, req.HasField("ttl")),
        dict(req.metadata),
    )


def batch(req: pb.SubmitBatchRequest, caller: str) -> c.Batch:
    """Errors: InvalidArgument naming the first command that is not one of the
    six (an empty `command`) or cannot be decoded (a timestamp out of range);
    each command's own fields are validated later, each on its own."""
    if len(req.commands) > limits.BATCH_COMMANDS_MAX:
        raise _invalid(
            "commands",
            f"must have 1 to {limits.BATCH_COMMANDS_MAX} commands (BATCH_COMMANDS_MAX)",
        )
    return c.Batch(
        caller,
        "",
        tuple(_batch_command(i, m, caller) for i, m in enumerate(req.commands)),
        atomic=req.atomic,
    )


def _batch_command(index: int, msg: pb.BatchCommand, caller: str) -> c.BatchCommand:
    which = msg.WhichOneof("command")
    try:
        if which == "charge":
            return charge(msg.charge, caller)
        if which == "reserve":
            return reserve(msg.reserve, caller)
        if which == "settle":
            return settle(msg.settle, caller)
        if which == "release":
            return release(msg.release, caller)
        if which == "refund":
            return refund(msg.refund, caller)
        if which == "grant":
            return grant(msg.grant, caller)
    except InvalidArgument as exc:
        raise InvalidArgument(
            [
                FieldViolation(f"commands[{index}].{which}.{v.field}", v.description)
                for v in exc.violations
            ]
        ) from exc
    raise _invalid(
        f"commands[{index}]", "must set one of charge, reserve, settle, release, refund, grant"
    )


def charge(req: pb.ChargeRequest, caller: str) -> c.Charge:
    return c.Charge(
        caller, req.idempotency_key, req.account_id, req.asset, req.amount, dict(req.metadata)
    )


def settle(req: pb.SettleRequest, caller: str) -> c.Settle:
    return c.Settle(caller, req.idempotency_key, req.reservation_id, req.amount, req.final)


def release(req: pb.ReleaseRequest, caller: str) -> c.Release:
    return c.Release(caller, req.idempotency_key, req.reservation_id, req.amount)


def refund(req: pb.RefundRequest, caller: str) -> c.Refund:
    return c.Refund(caller, req.idempotency_key, req.reservation_id, req.amount, req.reason)


# ---- domain -> messages


def balance(b: Balance) -> pb.Balance:
    return pb.Balance(
        account_id=b.account_id,
        asset=b.asset,
        available=b.available,
        reserved=b.reserved,
        granted=b.granted,
        settled=b.settled,
        refunded=b.refunded,
        expired=b.expired,
    )


def lot(lt: Lot) -> pb.Lot:
    out = pb.Lot(
        lot_id=lt.lot_id,
        source=lt.source,
        priority=lt.priority,
        amount=lt.amount,
        remaining=lt.remaining,
        created_at=_ts(lt.created_at),
    )
    if lt.expires_at is not None:
        out.expires_at.CopyFrom(_ts(lt.expires_at))
    return out


def reservation(r: Reservation) -> pb.Reservation:
    return pb.Reservation(
        reservation_id=r.reservation_id,
        account_id=r.account_id,
        asset=r.asset,
        amount=r.amount,
        settled=r.settled,
        released=r.released,
        expired=r.expired,
        refunded=r.refunded,
        remaining=r.remaining,
        state=_STATE[r.state],
        created_at=_ts(r.created_at),
        expires_at=_ts(r.expires_at),
        metadata=r.metadata,
        group_id=r.group_id,
        leg_key=r.leg_key,
    )


def entry(e: Entry) -> pb.Entry:
    return pb.Entry(
        entry_id=str(e.entry_id),
        transaction_id=e.transaction_id,
        account_id=e.account_id,
        asset=e.asset,
        amount=e.amount,
        movement=_MOVEMENT[e.movement],
        bucket=_BUCKET[e.bucket],
        reservation_id=e.reservation_id,
        lot_id=e.lot_id,
        created_at=_ts(e.created_at),
    )


_ALERT_STATE = {
    AlertState.ABOVE: pb.BalanceAlert.STATE_ABOVE,
    AlertState.BELOW: pb.BalanceAlert.STATE_BELOW,
    AlertState.EXHAUSTED: pb.BalanceAlert.STATE_EXHAUSTED,
}
_EVENT_KIND = {
    AlertEventKind.BALANCE_BELOW: pb.BalanceEvent.KIND_BALANCE_BELOW,
    AlertEventKind.BALANCE_RECOVERED: pb.BalanceEvent.KIND_BALANCE_RECOVERED,
    AlertEventKind.BALANCE_EXHAUSTED: pb.BalanceEvent.KIND_BALANCE_EXHAUSTED,
}


def alert(a: BalanceAlert) -> pb.BalanceAlert:
    below, recovered = a.levels()
    return pb.BalanceAlert(
        account_id=a.account_id,
        asset=a.asset,
        threshold=a.threshold,
        recovery=a.recovery,
        percent=a.percent,
        state=_ALERT_STATE[a.state],
        threshold_amount=below,
        recovery_amount=recovered,
        created_at=_ts(a.created_at),
    )


def streamed(msg: StreamMessage) -> pb.WatchTransactionsResponse:
    """Built in place (`.add`, field by field): a message passed to a constructor
    is copied, and streams send every transaction."""
    out = pb.WatchTransactionsResponse(position=encode_position(msg.position))
    for tx in msg.transactions:
        _streamed_transaction(out.transactions.add(), tx)
    return out


def _streamed_transaction(t: pb.StreamedTransaction, tx: StreamTransaction) -> None:
    t.position = encode_position(tx.position)
    t.transaction_id = tx.transaction_id
    t.movement = _MOVEMENT[tx.entries[0].movement]
    t.reservation_id = next((e.reservation_id for e in tx.entries if e.reservation_id), "")
    t.caller = tx.caller
    t.idempotency_key = tx.idempotency_key
    seconds, nanos = (tx.created_at - _EPOCH) // _SECOND, tx.created_at.microsecond * 1000
    t.commit_time.seconds, t.commit_time.nanos = seconds, nanos
    add_entry = t.entries.add
    for e in tx.entries:
        row = add_entry(
            entry_id=str(e.entry_id),
            transaction_id=e.transaction_id,
            account_id=e.account_id,
            asset=e.asset,
            amount=e.amount,
            movement=_MOVEMENT[e.movement],
            bucket=_BUCKET[e.bucket],
            reservation_id=e.reservation_id,
            lot_id=e.lot_id,
        )
        row.created_at.seconds, row.created_at.nanos = seconds, nanos
    add_balance = t.balances.add
    for b in tx.balances:
        add_balance(
            account_id=b.account_id,
            asset=b.asset,
            available=b.available,
            reserved=b.reserved,
            granted=b.granted,
            settled=b.settled,
            refunded=b.refunded,
            expired=b.expired,
        )
    for ev in tx.events:
        t.events.add(
            kind=_EVENT_KIND[ev.kind],
            account_id=ev.account_id,
            asset=ev.asset,
            available=ev.available,
            threshold_amount=ev.threshold,
            recovery_amount=ev.recovery,
        )


def statement(st: Statement) -> pb.GetStatementResponse:
    return pb.GetStatementResponse(
        opening=balance(st.opening),
        movements=[
            pb.StatementMovement(
                movement=_MOVEMENT[m.movement],
                amount=m.amount,
                available_change=m.available_change,
                reserved_change=m.reserved_change,
                entry_count=m.entry_count,
            )
            for m in st.movements
        ],
        closing=balance(st.closing),
        entries=[entry(e) for e in st.entries],
        next_page_token=st.next_token,
    )


def account(a: Account) -> pb.Account:
    return pb.Account(
        account_id=a.account_id,
        metadata=a.metadata,
        created_at=_ts(a.created_at),
        balances=[balance(b) for b in a.balances],
    )


_STATE_FILTER: dict[int, ReservationState] = {int(v): state for state, v in _STATE.items()}


def state_filter(value: int) -> ReservationState | None:
    """A ListReservations state filter: None for STATE_UNSPECIFIED (every state).

    Errors: InvalidArgument (state) for a number that is no State."""
    if value == pb.Reservation.STATE_UNSPECIFIED:
        return None
    state = _STATE_FILTER.get(int(value))
    if state is None:
        raise _invalid(
            "state", "must be STATE_OPEN, STATE_CLOSED, STATE_EXPIRED or unspecified (every state)"
        )
    return state
