"""Ledger traffic through the real generated stubs, for the observability tests."""

from __future__ import annotations

import grpc
from creditledger.v1 import ledger_pb2 as pb
from creditledger.v1 import ledger_pb2_grpc as pb_grpc
from creditledger_client.errors import error_from_rpc_error

RPC_TIMEOUT_S = 30.0
ASSET = "credits"


async def refused_charge(stub: pb_grpc.LedgerServiceAsyncStub, account_id: str, key: str) -> None:
    """A Charge larger than the balance; AssertionError unless refused FAILED_PRECONDITION."""
    request = pb.ChargeRequest(
        account_id=account_id, asset=ASSET, amount=10**9, idempotency_key=key
    )
    try:
        await stub.Charge(request, timeout=RPC_TIMEOUT_S)
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
        assert error_from_rpc_error(error).reason == "INSUFFICIENT_CREDITS", error
        return
    raise AssertionError(f"Charge of 10^9 on {account_id} was not refused")


async def account_lifecycle(stub: pb_grpc.LedgerServiceAsyncStub, account_id: str) -> list[str]:
    """Create, Grant (and its replay), Reserve, Settle, a refused Charge.

    Returns every identifier sent or received: none may show in /metrics.
    """
    ids = [account_id]
    await stub.CreateAccount(pb.CreateAccountRequest(account_id=account_id), timeout=RPC_TIMEOUT_S)
    grant = pb.GrantRequest(
        account_id=account_id, asset=ASSET, amount=100, idempotency_key=f"{account_id}-grant"
    )
    granted = await stub.Grant(grant, timeout=RPC_TIMEOUT_S)
    await stub.Grant(grant, timeout=RPC_TIMEOUT_S)  # a client retry: replayed
    reserve = pb.ReserveRequest(
        account_id=account_id, asset=ASSET, amount=40, idempotency_key=f"{account_id}-reserve"
    )
    reserved = await stub.Reserve(reserve, timeout=RPC_TIMEOUT_S)
    reservation_id = reserved.reservation.reservation_id
    settle = pb.SettleRequest(
        reservation_id=reservation_id, amount=30, final=True, idempotency_key=f"{account_id}-settle"
    )
    await stub.Settle(settle, timeout=RPC_TIMEOUT_S)
    await refused_charge(stub, account_id, f"{account_id}-charge")
    ids += [granted.lot.lot_id, reservation_id]
    ids += [f"{account_id}-{op}" for op in ("grant", "reserve", "settle", "charge")]
    return ids
