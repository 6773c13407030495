"""Reservation expiry: at once for anything that touches it, within 5 s for balances."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from creditledger.v1.ledger_pb2_grpc import LedgerServiceAsyncStub

import asyncio
from datetime import timedelta

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from google.protobuf import duration_pb2

from tests.conftest import RunningServer, key, new_account
from tests.support.rpc import error_info
from tests.support.verify import assert_ledger_consistent


async def wait_for(predicate: object, timeout_s: float = 5.0) -> None:
    """Poll a coroutine function until it returns True (the sweeper has no event to await)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await predicate():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not true within {timeout_s} s")
        await asyncio.sleep(0.05)


async def test_short_ttl_expires_and_balance_follows_within_5s(
    stub: LedgerServiceAsyncStub, ledger_server: RunningServer, database_url: str
) -> None:
    acct = await new_account(stub, grant=10)
    r = await stub.Reserve(
        pb.ReserveRequest(
            account_id=acct,
            asset="crm_credits",
            amount=6,
            idempotency_key=key(),
            ttl=duration_pb2.Duration(seconds=1),
        )
    )
    rid = r.reservation.reservation_id
    await stub.Settle(pb.SettleRequest(reservation_id=rid, amount=2, idempotency_key=key()))
    started = asyncio.get_running_loop().time()

    async def released() -> bool:
        # Reads see the expiry at once; the sweeper writes its entries within seconds.
        bal = await stub.GetBalance(pb.GetBalanceRequest(account_id=acct, asset="crm_credits"))
        entries = await stub.ListEntries(pb.ListEntriesRequest(account_id=acct))
        swept = pb.Entry.MOVEMENT_RESERVATION_EXPIRY in [e.movement for e in entries.entries]
        return swept and bal.balance.reserved == 0 and bal.balance.available == 8

    await wait_for(released, timeout_s=6.0)
    assert asyncio.get_running_loop().time() - started < 6.0
    got = await stub.GetReservation(pb.GetReservationRequest(reservation_id=rid))
    assert got.reservation.state == pb.Reservation.STATE_EXPIRED
    assert (got.reservation.settled, got.reservation.released) == (2, 4)
    entries = await stub.ListEntries(pb.ListEntriesRequest(account_id=acct))
    assert pb.Entry.MOVEMENT_RESERVATION_EXPIRY in [e.movement for e in entries.entries]
    for call in (
        stub.Settle(pb.SettleRequest(reservation_id=rid, amount=1, idempotency_key=key())),
        stub.Release(pb.ReleaseRequest(reservation_id=rid, idempotency_key=key())),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_info(err.value).reason == "RESERVATION_EXPIRED"
    # Refund still works on the settled part of an expired reservation.
    ref = await stub.Refund(pb.RefundRequest(reservation_id=rid, amount=2, idempotency_key=key()))
    assert ref.balance.available == 10
    await assert_ledger_consistent(database_url)


async def test_settle_after_expiry_fails_even_before_the_sweeper(
    stub: LedgerServiceAsyncStub, ledger_server: RunningServer
) -> None:
    acct = await new_account(stub, grant=10)
    r = await stub.Reserve(
        pb.ReserveRequest(
            account_id=acct,
            asset="crm_credits",
            amount=5,
            idempotency_key=key(),
            ttl=duration_pb2.Duration(seconds=30),
        )
    )
    await ledger_server.app.sweeper.stop()
    try:
        ledger_server.clock.advance(timedelta(seconds=31))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Settle(
                pb.SettleRequest(
                    reservation_id=r.reservation.reservation_id, amount=5, idempotency_key=key()
                )
            )
        assert error_info(err.value).reason == "RESERVATION_EXPIRED"
        # The touch itself expired it: the hold is back, without the sweeper.
        bal = await stub.GetBalance(pb.GetBalanceRequest(account_id=acct, asset="crm_credits"))
        assert (bal.balance.available, bal.balance.reserved) == (10, 0)
    finally:
        ledger_server.app.sweeper.start()
