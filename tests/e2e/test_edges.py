"""Issue 13's defects, each through the real stub, on a server whose clock and
sweeper move only when the test says: right at the instant a thing is due,
before any background work has run."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from google.protobuf import duration_pb2, timestamp_pb2

from ledger.domain import limits
from tests.support.manual_server import ServerThread
from tests.support.rpc import error_info

ASSET = "crm_credits"
INT64_MAX = 2**63 - 1

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[ServerThread]:
    s = ServerThread(database_url)
    yield s
    s.close()


def key() -> str:
    return uuid.uuid4().hex


def account(s: ServerThread, grant: int = 0, **grant_fields: Any) -> str:
    acct = f"edge-{uuid.uuid4().hex[:12]}"
    s.stub.CreateAccount(pb.CreateAccountRequest(account_id=acct))
    if grant:
        s.stub.Grant(
            pb.GrantRequest(
                account_id=acct, asset=ASSET, amount=grant, idempotency_key=key(), **grant_fields
            )
        )
    return acct


def reserve(s: ServerThread, acct: str, amount: int, ttl_s: int = 1) -> str:
    r = s.stub.Reserve(
        pb.ReserveRequest(
            account_id=acct,
            asset=ASSET,
            amount=amount,
            idempotency_key=key(),
            ttl=duration_pb2.Duration(seconds=ttl_s),
        )
    )
    return str(r.reservation.reservation_id)


def balance(s: ServerThread, acct: str) -> pb.Balance:
    return s.stub.GetBalance(pb.GetBalanceRequest(account_id=acct, asset=ASSET)).balance


def at(s: ServerThread, seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(s.clock.t + timedelta(seconds=seconds))
    return ts


# ---------------------------------------------------------------- 1: expired holds


@pytest.mark.parametrize("spend", ["Charge", "Reserve", "ReserveGroup"])
def test_an_overdue_hold_is_available_to_the_next_spend_before_any_sweep(
    server: ServerThread, spend: str
) -> None:
    acct = account(server, grant=10)
    rid = reserve(server, acct, 10, ttl_s=1)
    server.advance(timedelta(seconds=1))  # exactly at the ttl: due
    got = server.stub.GetReservation(pb.GetReservationRequest(reservation_id=rid)).reservation
    assert got.state == pb.Reservation.STATE_EXPIRED
    bal = balance(server, acct)
    assert (bal.available, bal.reserved) == (10, 0)
    k = key()
    if spend == "Charge":
        req: Any = pb.ChargeRequest(account_id=acct, asset=ASSET, amount=10, idempotency_key=k)
    elif spend == "Reserve":
        req = pb.ReserveRequest(account_id=acct, asset=ASSET, amount=10, idempotency_key=k)
    else:
        req = pb.ReserveGroupRequest(
            legs=[pb.ReserveGroupLeg(account_id=acct, asset=ASSET, amount=10, leg_key="all")],
            idempotency_key=k,
        )
    getattr(server.stub, spend)(req)  # not INSUFFICIENT_CREDITS
    server.sweep()
    getattr(server.stub, spend)(req)  # the retry replays the success
    bal = balance(server, acct)
    assert bal.available == 0 and bal.reserved + bal.settled == 10


def test_a_hold_is_not_expired_a_microsecond_before_its_ttl(server: ServerThread) -> None:
    acct = account(server, grant=10)
    rid = reserve(server, acct, 10, ttl_s=1)
    server.advance(timedelta(seconds=1) - timedelta(microseconds=1))
    got = server.stub.GetReservation(pb.GetReservationRequest(reservation_id=rid)).reservation
    assert got.state == pb.Reservation.STATE_OPEN
    with pytest.raises(grpc.RpcError) as err:
        server.stub.Charge(
            pb.ChargeRequest(account_id=acct, asset=ASSET, amount=1, idempotency_key=key())
        )
    assert error_info(err.value).reason == "INSUFFICIENT_CREDITS"


# ---------------------------------------------------------------- 2: reads agree


def test_get_account_and_get_balance_agree_right_after_a_lot_expires(server: ServerThread) -> None:
    acct = account(server, grant=50, expires_at=at(server, 5))
    rid = reserve(server, acct, 20, ttl_s=60)
    server.advance(timedelta(seconds=5))
    b = balance(server, acct)
    a = next(
        x
        for x in server.stub.GetAccount(pb.GetAccountRequest(account_id=acct)).account.balances
        if x.asset == ASSET
    )
    # The unreserved 30 written off; the held 20 still held.
    assert (b.available, b.reserved, b.granted, b.expired) == (0, 20, 50, 30)
    assert (a.available, a.reserved, a.granted, a.expired) == (0, 20, 50, 30)
    # The hold's own expiry later writes off the held part, never back to available.
    server.advance(timedelta(seconds=60))
    got = server.stub.GetReservation(pb.GetReservationRequest(reservation_id=rid)).reservation
    assert (got.state, got.released, got.expired, got.remaining) == (
        pb.Reservation.STATE_EXPIRED,
        0,
        20,
        0,
    )
    assert balance(server, acct).expired == 50
    server.sweep()
    assert balance(server, acct).expired == 50
    after = server.stub.GetReservation(pb.GetReservationRequest(reservation_id=rid)).reservation
    assert (after.released, after.expired) == (0, 20)


# ---------------------------------------------------------------- 6: lifetime totals


async def _set_totals(url: str, acct: str, settled: int, refunded: int, granted: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "UPDATE balances SET settled = $3, refunded = $4, granted = $5"
            " WHERE account_id = $1 AND asset = $2",
            acct,
            ASSET,
            settled,
            refunded,
            granted,
        )
    finally:
        await conn.close()


async def _totals_from_entries(url: str, acct: str) -> None:
    """Undo _set_totals: the database is shared with tests that run `ledger verify`."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "UPDATE balances b SET granted = e.granted, settled = e.settled, refunded = e.refunded"
            " FROM (SELECT coalesce(sum(amount) FILTER (WHERE movement = 'grant'), 0) AS granted,"
            "  coalesce(-sum(amount) FILTER (WHERE movement = 'settle'), 0) AS settled,"
            "  coalesce(sum(amount) FILTER (WHERE movement = 'refund'), 0) AS refunded"
            "  FROM entries WHERE account_id = $1 AND asset = $2) AS e"
            " WHERE b.account_id = $1 AND b.asset = $2",
            acct,
            ASSET,
        )
    finally:
        await conn.close()


@pytest.fixture
def saturated_account(server: ServerThread) -> Iterator[str]:
    acct = account(server, grant=limits.AMOUNT_MAX)
    yield acct
    server.run(_totals_from_entries(server.database_url, acct))


def test_lifetime_totals_saturate_and_never_stop_spending(
    server: ServerThread, saturated_account: str
) -> None:
    """As after ~9,223 cycles of Charge 10^15 + Refund 10^15 (set directly: the loop takes minutes)."""
    acct = saturated_account
    server.run(
        _set_totals(
            server.database_url,
            acct,
            settled=INT64_MAX - 5,
            refunded=INT64_MAX - 5,
            granted=INT64_MAX - 1,
        )
    )
    c = server.stub.Charge(
        pb.ChargeRequest(
            account_id=acct, asset=ASSET, amount=limits.AMOUNT_MAX, idempotency_key=key()
        )
    )
    assert c.balance.settled == INT64_MAX and c.balance.available == 0
    r = server.stub.Refund(
        pb.RefundRequest(
            reservation_id=c.reservation.reservation_id,
            amount=limits.AMOUNT_MAX,
            idempotency_key=key(),
        )
    )
    assert r.balance.refunded == INT64_MAX and r.balance.available == limits.AMOUNT_MAX
    g = server.stub.Grant(
        pb.GrantRequest(account_id=acct, asset=ASSET, amount=10, idempotency_key=key())
    )
    assert g.balance.granted == INT64_MAX and g.balance.available == limits.AMOUNT_MAX + 10


# ---------------------------------------------------------------- 7: group order


def test_get_reservation_group_keeps_the_requested_order(server: ServerThread) -> None:
    acct = account(server, grant=30)
    keys = ["zulu", "alpha", "mike", "bravo"]
    g = server.stub.ReserveGroup(
        pb.ReserveGroupRequest(
            legs=[
                pb.ReserveGroupLeg(account_id=acct, asset=ASSET, amount=i + 1, leg_key=k)
                for i, k in enumerate(keys)
            ],
            idempotency_key=key(),
        )
    )
    assert [r.leg_key for r in g.group.reservations] == keys
    got = server.stub.GetReservationGroup(pb.GetReservationGroupRequest(group_id=g.group.group_id))
    assert [r.leg_key for r in got.group.reservations] == keys


# ---------------------------------------------------------------- 8: many lots


def test_a_spend_past_the_first_lots_loaded_draws_them_in_spend_order(server: ServerThread) -> None:
    count = limits.LOTS_LOADED_FIRST + 8
    acct = account(server)
    for i in range(count):
        server.stub.Grant(
            pb.GrantRequest(
                account_id=acct, asset=ASSET, amount=1, idempotency_key=key(), priority=count - i
            )
        )
    # A high-priority (spent last) lot granted in the same batch as nothing else.
    c = server.stub.Charge(
        pb.ChargeRequest(account_id=acct, asset=ASSET, amount=count - 2, idempotency_key=key())
    )
    assert c.balance.available == 2
    lots = server.stub.GetBalance(
        pb.GetBalanceRequest(account_id=acct, asset=ASSET, include_lots=True)
    ).lots
    # The two left are those with the highest priority numbers: granted first.
    assert sorted(lot.priority for lot in lots) == [count - 1, count]


def test_live_lots_per_pair_are_capped_with_a_clear_reason(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "LIVE_LOTS_PER_PAIR_MAX", 5)
    acct = account(server)
    for _ in range(5):
        server.stub.Grant(
            pb.GrantRequest(account_id=acct, asset=ASSET, amount=1, idempotency_key=key())
        )
    with pytest.raises(grpc.RpcError) as err:
        server.stub.Grant(
            pb.GrantRequest(account_id=acct, asset=ASSET, amount=1, idempotency_key=key())
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(err.value)
    assert info.reason == "LOT_LIMIT_EXCEEDED"
    assert info.metadata["limit"] == "5" and "LIVE_LOTS_PER_PAIR_MAX" in (err.value.details() or "")
    # Spending a lot whole frees its place.
    server.stub.Charge(
        pb.ChargeRequest(account_id=acct, asset=ASSET, amount=1, idempotency_key=key())
    )
    server.stub.Grant(
        pb.GrantRequest(account_id=acct, asset=ASSET, amount=1, idempotency_key=key())
    )


# ---------------------------------------------------------------- 9: smaller


def test_a_reserve_without_ttl_and_with_the_default_ttl_are_one_request(
    server: ServerThread,
) -> None:
    acct = account(server, grant=10)
    k = key()
    first = server.stub.Reserve(
        pb.ReserveRequest(account_id=acct, asset=ASSET, amount=3, idempotency_key=k)
    )
    again, call = server.stub.Reserve.with_call(
        pb.ReserveRequest(
            account_id=acct,
            asset=ASSET,
            amount=3,
            idempotency_key=k,
            ttl=duration_pb2.Duration(seconds=limits.TTL_DEFAULT_S),
        )
    )
    assert again.reservation.reservation_id == first.reservation.reservation_id
    assert ("idempotent-replayed", "true") in tuple(call.trailing_metadata())


def test_a_request_wrong_in_every_field_gets_a_bounded_invalid_argument(
    server: ServerThread,
) -> None:
    """32 bad metadata entries once made trailers of ~8.5 KB: past gRPC's 8 KiB, the
    caller saw RESOURCE_EXHAUSTED instead of the INVALID_ARGUMENT it could fix."""
    acct = account(server)
    bad = {f"{'k' * 60}{i:04d}\t": "v" * 600 for i in range(32)}
    with pytest.raises(grpc.RpcError) as err:
        server.stub.Grant(
            pb.GrantRequest(
                account_id=acct, asset=ASSET, amount=1, idempotency_key=key(), metadata=bad
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert "more" in (err.value.details() or "")


def test_a_hold_that_ended_before_its_lot_expired_gave_its_credits_back_first(
    server: ServerThread,
) -> None:
    """Found by the state machine: with both deadlines passed and nothing swept in
    between, the hold's part must read as released (the lot was live at the hold's
    expiry) and then expired with the lot, not as written off from the hold."""
    acct = account(server, grant=5, expires_at=at(server, 2))
    rid = reserve(server, acct, 5, ttl_s=1)
    server.advance(timedelta(seconds=3))  # past the hold's expiry, then the lot's
    got = server.stub.GetReservation(pb.GetReservationRequest(reservation_id=rid)).reservation
    assert (got.state, got.released, got.expired) == (pb.Reservation.STATE_EXPIRED, 5, 0)
    bal = balance(server, acct)
    assert (bal.available, bal.reserved, bal.expired) == (0, 0, 5)
    server.sweep()
    after = server.stub.GetReservation(pb.GetReservationRequest(reservation_id=rid)).reservation
    assert (after.released, after.expired) == (5, 0)
