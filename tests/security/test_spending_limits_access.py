"""SetSpendingLimits is admin only: extending credit is the operator's decision."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb

from tests.security.conftest import bearer, refusal

if TYPE_CHECKING:
    from creditledger.v1.ledger_pb2_grpc import LedgerServiceAsyncStub

pytestmark = pytest.mark.timeout(60)


async def test_only_an_admin_may_set_a_floor(
    tstub: LedgerServiceAsyncStub, tokens: dict[str, str]
) -> None:
    admin = bearer(tokens["admin"])
    acct = f"tenant-b:limits-{uuid.uuid4().hex[:8]}"
    await tstub.CreateAccount(pb.CreateAccountRequest(account_id=acct), metadata=admin)
    req = pb.SetSpendingLimitsRequest(
        account_id=acct, asset="sms", floor=-100, idempotency_key=uuid.uuid4().hex
    )
    # tenant-b may grant to its own accounts, but not lend them credit.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tstub.SetSpendingLimits(req, metadata=bearer(tokens["tenant-b"]))
    got = refusal(err.value)
    assert (got.code, got.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    assert got.metadata == {"method": "SetSpendingLimits", "permission": "admin"}
    done = await tstub.SetSpendingLimits(req, metadata=admin)
    assert done.balance.floor == -100
    # The refusal recorded nothing: the same key still ran, once.
    again = await tstub.SetSpendingLimits(req, metadata=admin)
    assert again == done
