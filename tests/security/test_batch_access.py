"""SubmitBatch checks permissions and account scope per command, exactly as the
single calls do; a batch weighs its number of commands in the rate limit."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from google.rpc import error_details_pb2, status_pb2

from tests.security.conftest import bearer, refusal

if TYPE_CHECKING:
    from creditledger.v1.ledger_pb2_grpc import LedgerServiceAsyncStub as Stub

ASSET = "crm_credits"
pytestmark = pytest.mark.timeout(60)


def key() -> str:
    return uuid.uuid4().hex


def reason_of(error: status_pb2.Status) -> str:
    for detail in error.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    raise AssertionError(f"no ErrorInfo in {error}")


async def funded(stub: Stub, admin: tuple[tuple[str, str], ...], prefix: str) -> str:
    account = f"{prefix}{uuid.uuid4().hex[:10]}"
    await stub.CreateAccount(pb.CreateAccountRequest(account_id=account), metadata=admin)
    await stub.Grant(
        pb.GrantRequest(account_id=account, asset=ASSET, amount=100, idempotency_key=key()),
        metadata=admin,
    )
    return account


def charge(account: str) -> pb.BatchCommand:
    return pb.BatchCommand(
        charge=pb.ChargeRequest(account_id=account, asset=ASSET, amount=1, idempotency_key=key())
    )


async def test_permission_and_scope_are_per_command(tstub: Stub, tokens: dict[str, str]) -> None:
    admin, spender = bearer(tokens["admin"]), bearer(tokens["spender"])
    own = await funded(tstub, admin, "tenant-a:")
    other = await funded(tstub, admin, "tenant-b:")
    grant = pb.BatchCommand(
        grant=pb.GrantRequest(account_id=own, asset=ASSET, amount=5, idempotency_key=key())
    )
    commands = [charge(own), charge(other), grant, charge(f"tenant-b:missing-{key()[:8]}")]
    got = await tstub.SubmitBatch(pb.SubmitBatchRequest(commands=commands), metadata=spender)
    assert got.outcomes[0].WhichOneof("outcome") == "charge"
    # Another tenant's account reads exactly as a missing one; a right the caller
    # lacks is PERMISSION_DENIED, for that command alone.
    assert [reason_of(o.error) for o in got.outcomes[1:]] == [
        "ACCOUNT_NOT_FOUND",
        "PERMISSION_DENIED",
        "ACCOUNT_NOT_FOUND",
    ]
    assert got.outcomes[2].error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    balance = await tstub.GetBalance(
        pb.GetBalanceRequest(account_id=other, asset=ASSET), metadata=admin
    )
    assert balance.balance.available == 100

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await tstub.SubmitBatch(
            pb.SubmitBatchRequest(commands=[charge(own), grant], atomic=True), metadata=spender
        )
    r = refusal(info.value)
    assert (r.code, r.reason, r.metadata["batch_index"]) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_DENIED",
        "1",
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await tstub.SubmitBatch(
            pb.SubmitBatchRequest(commands=[charge(own), charge(other)], atomic=True),
            metadata=spender,
        )
    r = refusal(info.value)
    assert (r.code, r.reason, r.metadata["batch_index"]) == (
        grpc.StatusCode.NOT_FOUND,
        "ACCOUNT_NOT_FOUND",
        "1",
    )
    balance = await tstub.GetBalance(
        pb.GetBalanceRequest(account_id=own, asset=ASSET), metadata=admin
    )
    assert balance.balance.available == 99  # only the first, non-atomic batch's charge


async def test_a_batch_weighs_its_commands_in_the_rate_limit(
    tstub: Stub, tokens: dict[str, str]
) -> None:
    """`batcher` has 5 units/s with bursts of 3. A batch of 3 commands takes the
    whole burst (one unit per command), so the very next call is refused; were the
    batch one unit, two would be left."""
    batcher = bearer(tokens["batcher"])
    commands = [charge(f"tenant-a:missing-{key()[:8]}") for _ in range(3)]
    got = await tstub.SubmitBatch(pb.SubmitBatchRequest(commands=commands), metadata=batcher)
    assert len(got.outcomes) == 3
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await tstub.GetAccount(pb.GetAccountRequest(account_id="tenant-a:x"), metadata=batcher)
    r = refusal(info.value)
    assert (r.code, r.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
