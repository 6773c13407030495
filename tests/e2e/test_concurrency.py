"""Concurrency: no double spend, whatever the interleaving."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from creditledger.v1.ledger_pb2_grpc import LedgerServiceAsyncStub

import asyncio

import grpc
from creditledger.v1 import ledger_pb2 as pb

from tests.conftest import key, new_account
from tests.support.rpc import error_info
from tests.support.verify import assert_ledger_consistent


async def test_200_reserves_against_100_credits(
    stub: LedgerServiceAsyncStub, database_url: str
) -> None:
    acct = await new_account(stub, grant=100)

    async def reserve_one() -> str:
        try:
            await stub.Reserve(
                pb.ReserveRequest(
                    account_id=acct, asset="crm_credits", amount=1, idempotency_key=key()
                )
            )
            return "ok"
        except grpc.aio.AioRpcError as err:
            return str(error_info(err).reason)

    outcomes = await asyncio.gather(*(reserve_one() for _ in range(200)))
    assert outcomes.count("ok") == 100
    assert outcomes.count("INSUFFICIENT_CREDITS") == 100
    bal = await stub.GetBalance(pb.GetBalanceRequest(account_id=acct, asset="crm_credits"))
    assert (bal.balance.available, bal.balance.reserved) == (0, 100)
    await assert_ledger_consistent(database_url)


async def test_mixed_concurrent_traffic_on_one_account_keeps_invariants(
    stub: LedgerServiceAsyncStub, database_url: str
) -> None:
    acct = await new_account(stub, grant=500)

    async def worker(i: int) -> int:
        spent = 0
        for _ in range(5):
            try:
                r = await stub.Reserve(
                    pb.ReserveRequest(
                        account_id=acct, asset="crm_credits", amount=3, idempotency_key=key()
                    )
                )
            except grpc.aio.AioRpcError:
                continue
            rid = r.reservation.reservation_id
            await stub.Settle(
                pb.SettleRequest(
                    reservation_id=rid, amount=2, final=i % 2 == 0, idempotency_key=key()
                )
            )
            spent += 2
            if i % 2:
                await stub.Release(pb.ReleaseRequest(reservation_id=rid, idempotency_key=key()))
            if i % 3 == 0:
                await stub.Refund(
                    pb.RefundRequest(reservation_id=rid, amount=1, idempotency_key=key())
                )
                spent -= 1
        return spent

    spent = sum(await asyncio.gather(*(worker(i) for i in range(30))))
    bal = await stub.GetBalance(pb.GetBalanceRequest(account_id=acct, asset="crm_credits"))
    assert bal.balance.reserved == 0
    assert bal.balance.available == 500 - spent
    await assert_ledger_consistent(database_url)
