"""The Python client against the real server: overage modes, versions, caps' typed errors."""

from __future__ import annotations

import uuid

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from creditledger_client import (
    CapExceeded,
    GroupLeg,
    InsufficientCredits,
    LedgerClient,
    Movement,
    Overage,
    PreconditionFailed,
)
from creditledger_client.errors import error_from_rpc_error

from tests.conftest import RunningServer

ASSET = "sms"


@pytest.mark.timeout(60)
async def test_overage_modes_versions_and_typed_policy_errors(ledger_server: RunningServer) -> None:
    async with LedgerClient(ledger_server.target) as client:
        account = f"pol-{uuid.uuid4().hex[:10]}"
        await client.create_account(account)
        granted = await client.grant(account, ASSET, 2_400)
        assert granted.balance.version == 1 and granted.balance.spendable == 2_400
        capped = await client.reserve(account, ASSET, 3_000, overage=Overage.CAP)
        assert capped.reservation.amount == 2_400 and capped.balance.available == 0
        with pytest.raises(InsufficientCredits):
            await client.charge(account, ASSET, 1, overage=Overage.DEBT)  # floor 0
        stub = client._stub  # the raw stubs work beside the helpers (test_schedules_live.py)
        await stub.SetSpendingLimits(
            pb.SetSpendingLimitsRequest(
                account_id=account, asset=ASSET, floor=-10, idempotency_key=uuid.uuid4().hex
            )
        )
        lent = await client.charge(account, ASSET, 10, overage=Overage.DEBT)
        assert (lent.balance.debt, lent.balance.floor, lent.balance.spendable) == (10, -10, 0)
        page = await client.list_entries(account)
        assert Movement.DEBT in {e.movement for e in page.entries}
        member = f"{account}:m"
        await stub.CreateAccount(pb.CreateAccountRequest(account_id=member, parent_id=account))
        await stub.SetMemberCap(
            pb.SetMemberCapRequest(
                account_id=member, asset=ASSET, window=pb.CAP_WINDOW_DAY, cap=5,
                idempotency_key=uuid.uuid4().hex,
            )
        )  # fmt: skip
        await client.release(capped.reservation.reservation_id)  # the pool has lots again
        with pytest.raises(CapExceeded) as cap:
            await client.charge(member, ASSET, 6)
        assert (cap.value.window, cap.value.cap, cap.value.remaining) == ("day", 5, 5)
        with pytest.raises(grpc.aio.AioRpcError) as raw:
            await stub.Charge(
                pb.ChargeRequest(
                    account_id=account, asset=ASSET, amount=1, idempotency_key=uuid.uuid4().hex,
                    preconditions=[pb.Precondition(version=1)],
                )
            )  # fmt: skip
        stale = error_from_rpc_error(raw.value)
        assert isinstance(stale, PreconditionFailed)
        assert stale.version == lent.balance.version + 1 and stale.available == 2_400  # released


@pytest.mark.timeout(60)
async def test_reserve_group_takes_an_overage_mode(ledger_server: RunningServer) -> None:
    async with LedgerClient(ledger_server.target) as client:
        a, b = f"pol-{uuid.uuid4().hex[:10]}", f"pol-{uuid.uuid4().hex[:10]}"
        for acct in (a, b):
            await client.create_account(acct)
        await client.grant(a, ASSET, 50)
        legs = [GroupLeg(a, ASSET, 40, "first"), GroupLeg(a, ASSET, 40, "second"),
                GroupLeg(b, ASSET, 5, "third")]  # fmt: skip
        with pytest.raises(InsufficientCredits) as short:
            await client.reserve_group(legs)
        assert short.value.leg_key == "second"
        key = uuid.uuid4().hex
        got = await client.reserve_group(legs, overage=Overage.CAP, idempotency_key=key)
        amounts = [(r.leg_key, r.amount, bool(r.reservation_id)) for r in got.group.reservations]
        assert amounts == [("first", 40, True), ("second", 10, True), ("third", 0, False)]
        again = await client.reserve_group(legs, overage=Overage.CAP, idempotency_key=key)
        assert again.replayed and again.group == got.group
