from __future__ import annotations

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb

from tests.conftest import key, new_account


async def test_email_scenario(stub) -> None:  # type: ignore[no-untyped-def]
    acct = await new_account(stub, "email", grant=30, asset="image_opens")
    for _ in range(30):
        await stub.Charge(
            pb.ChargeRequest(account_id=acct, asset="image_opens", amount=1, idempotency_key=key())
        )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Charge(
            pb.ChargeRequest(account_id=acct, asset="image_opens", amount=1, idempotency_key=key())
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    bal = await stub.GetBalance(pb.GetBalanceRequest(account_id=acct, asset="image_opens"))
    assert bal.balance.available == 0
    assert bal.balance.settled == 30
