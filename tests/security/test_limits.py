"""Limits: a per-caller rate limit that trips and recovers without touching
other callers, and the maximum message size."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb

from tests.security.conftest import bearer, refusal

if TYPE_CHECKING:
    from creditledger.v1.ledger_pb2_grpc import LedgerServiceAsyncStub as Stub


@pytest.fixture(scope="module")
async def account(tstub: Stub, tokens: dict[str, str]) -> str:
    account_id = f"tenant-a:{uuid.uuid4().hex[:10]}"
    await tstub.CreateAccount(
        pb.CreateAccountRequest(account_id=account_id), metadata=bearer(tokens["admin"])
    )
    return account_id


async def test_rate_limit_trips_and_recovers(
    tstub: Stub, tokens: dict[str, str], account: str
) -> None:
    """The caller "limited" has 5 requests/s with bursts of 3."""
    limited, other = bearer(tokens["limited"]), bearer(tokens["tenant-a"])
    req = pb.GetAccountRequest(account_id=account)
    tripped = None
    for _ in range(10):  # the burst, then a refusal (refills are far slower than the calls)
        try:
            await tstub.GetAccount(req, metadata=limited)
        except grpc.aio.AioRpcError as err:
            tripped = refusal(err)
            break
    assert tripped is not None, "the rate limit never tripped"
    assert (tripped.code, tripped.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    assert tripped.retry_delay_s is not None and 0 < tripped.retry_delay_s <= 0.2 + 1e-3
    assert int(tripped.metadata["retry_after_ms"]) > 0
    # Another caller is not slowed down by it.
    for _ in range(10):
        await tstub.GetAccount(req, metadata=other)
    await asyncio.sleep(tripped.retry_delay_s)  # what RetryInfo told the client to wait
    await tstub.GetAccount(req, metadata=limited)


async def test_messages_over_the_size_limit_are_refused(
    tstub: Stub, tokens: dict[str, str], account: str
) -> None:
    big = pb.CreateAccountRequest(account_id=account, metadata={"k": "v" * (70 * 1024)})
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await tstub.CreateAccount(big, metadata=bearer(tokens["admin"]))
    # Each method holds its own size limit (SubmitBatch takes more), named in the
    # error; INVALID_ARGUMENT, so that no client retries it.
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "MESSAGE_BYTES_MAX" in (info.value.details() or "")
