"""Replies whose nested messages are filled in place (ledger.transport.convert
fill_reservation / fill_balance) carry exactly what the constructor form carried:
every field, the optional caps only when set, metadata, the oneof of a batch
outcome and `taken` only on Charge and Reserve."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from creditledger.v1 import ledger_pb2 as pb
from google.protobuf import timestamp_pb2

from ledger.domain import commands as c
from ledger.domain.model import Balance, Reservation, ReservationResult, ReservationState
from ledger.transport import servicer

NOW = datetime(2026, 12, 5, 2, 50, 1, 123456, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ts(t: datetime) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(
        seconds=(t - EPOCH) // timedelta(seconds=1), nanos=t.microsecond * 1000
    )


def _case(i: int) -> tuple[Reservation, Balance]:
    reservation = Reservation(
        f"00000000-0000-4000-8000-{i:012d}",
        f"acct-{i}",
        "crm",
        10 + i,
        3,
        1,
        0,
        ReservationState.OPEN if i % 2 else ReservationState.CLOSED,
        NOW,
        NOW + timedelta(seconds=60),
        {"order": str(i)} if i % 3 else {},
        group_id="g-1" if i % 5 == 0 else "",
        leg_key="leg" if i % 5 == 0 else "",
        member_id="member" if i % 7 == 0 else "",
    )
    balance = Balance(
        f"acct-{i}", "crm", 90 - i, 10, 100, 3, 0, 0, i, floor=-5, debt=0,
        cap_day=7 if i % 4 == 0 else None, cap_lifetime=0 if i % 6 == 0 else None,
    )  # fmt: skip
    return reservation, balance


def _expected(r: Reservation, b: Balance, response: type[Any]) -> Any:
    """The reply as the constructor form built it (before the in-place fill)."""
    caps = {
        name: getattr(b, name)
        for name in ("cap_day", "cap_month", "cap_lifetime")
        if getattr(b, name) is not None
    }
    reply = response(
        reservation=pb.Reservation(
            reservation_id=r.reservation_id, account_id=r.account_id, asset=r.asset,
            amount=r.amount, settled=r.settled, released=r.released, expired=r.expired,
            refunded=r.refunded, remaining=r.remaining,
            state=pb.Reservation.STATE_OPEN if r.state is ReservationState.OPEN
            else pb.Reservation.STATE_CLOSED,
            created_at=_ts(r.created_at), expires_at=_ts(r.expires_at), metadata=r.metadata,
            group_id=r.group_id, leg_key=r.leg_key, member_id=r.member_id,
        ),
        balance=pb.Balance(
            account_id=b.account_id, asset=b.asset, available=b.available, reserved=b.reserved,
            granted=b.granted, settled=b.settled, refunded=b.refunded, expired=b.expired,
            version=b.version, floor=b.floor, debt=b.debt, spendable=b.spendable_in_debt, **caps,
        ),
    )  # fmt: skip
    if response in (pb.ChargeResponse, pb.ReserveResponse):
        reply.taken = r.amount
    return reply


RESPONSES = [
    ("Charge", pb.ChargeResponse),
    ("Reserve", pb.ReserveResponse),
    ("Settle", pb.SettleResponse),
    ("Release", pb.ReleaseResponse),
    ("Refund", pb.RefundResponse),
]


def test_single_replies_carry_every_field() -> None:
    for i in range(12):
        r, b = _case(i)
        for _, response in RESPONSES:
            got = servicer._reservation_reply(ReservationResult(r, b), response)
            assert got == _expected(r, b, response), (i, response.__name__)


def test_a_batch_reply_carries_each_outcome_in_its_own_field() -> None:
    cmds: list[c.BatchCommand] = []
    outcomes: list[tuple[Any, bool]] = []
    expected = pb.SubmitBatchResponse()
    for i in range(10):
        method, response = RESPONSES[i % len(RESPONSES)]
        r, b = _case(i)
        cmd: c.BatchCommand
        if method in ("Charge", "Reserve"):
            cmd = (c.Charge if method == "Charge" else c.Reserve)(
                "t", f"k{i}", r.account_id, "crm", 1
            )
        elif method == "Settle":
            cmd = c.Settle("t", f"k{i}", r.reservation_id, 1)
        elif method == "Release":
            cmd = c.Release("t", f"k{i}", r.reservation_id)
        else:
            cmd = c.Refund("t", f"k{i}", r.reservation_id, 1)
        cmds.append(cmd)
        outcomes.append((ReservationResult(r, b), i % 3 == 0))
        expected.outcomes.add(replayed=i % 3 == 0, **{method.lower(): _expected(r, b, response)})
    got = servicer._batch_response(tuple(cmds), tuple(outcomes))
    assert got == expected
    assert [o.WhichOneof("outcome") for o in got.outcomes] == [
        m.lower() for m, _ in (RESPONSES * 2)[:10]
    ]
