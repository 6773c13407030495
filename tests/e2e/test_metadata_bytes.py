"""Metadata values are limited in bytes of UTF-8, as documented, not in characters
(issue 13, item 9: 512 "é", 1024 bytes, used to pass)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from creditledger.v1.ledger_pb2_grpc import LedgerServiceAsyncStub

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb

from ledger.domain import limits
from tests.conftest import key, new_account
from tests.support.rpc import error_info, field_violations

pytestmark = pytest.mark.timeout(60)

LIMIT = limits.METADATA_VALUE_LEN_MAX  # 512 bytes
FITS = ["a" * LIMIT, "é" * (LIMIT // 2), "\U0001f4b3" * (LIMIT // 4), "中" * (LIMIT // 3)]
TOO_LONG = ["a" * (LIMIT + 1), "é" * LIMIT, "é" * (LIMIT // 2) + "a", "\U0001f4b3" * 129]


def requests(account_id: str, value: str) -> list[tuple[str, Any]]:
    """Every RPC that takes metadata, with `value` in it."""
    md = {"note": value}
    group = pb.ReserveGroupRequest(idempotency_key=key(), metadata=md)
    group.legs.add(account_id=account_id, asset="crm_credits", amount=1, leg_key="a")
    target: dict[str, Any] = {
        "account_id": account_id,
        "asset": "crm_credits",
        "amount": 1,
        "metadata": md,
    }
    return [
        ("CreateAccount", pb.CreateAccountRequest(account_id=account_id + "-x", metadata=md)),
        ("Grant", pb.GrantRequest(idempotency_key=key(), **target)),
        ("Reserve", pb.ReserveRequest(idempotency_key=key(), **target)),
        ("Charge", pb.ChargeRequest(idempotency_key=key(), **target)),
        ("ReserveGroup", group),
    ]


@pytest.mark.parametrize("value", TOO_LONG, ids=lambda v: f"{len(v.encode())}-bytes")
async def test_a_value_over_512_bytes_is_refused(stub: LedgerServiceAsyncStub, value: str) -> None:
    account_id = await new_account(stub, grant=100)
    for method, request in requests(account_id, value):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await getattr(stub, method)(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
        assert error_info(err.value).reason == "INVALID_ARGUMENT"
        assert field_violations(err.value) == ["metadata['note']"], method
        assert "512 bytes" in (err.value.details() or ""), err.value.details()


@pytest.mark.parametrize("value", FITS, ids=lambda v: f"{len(v)}-chars")
async def test_a_value_of_512_bytes_is_kept_whole(stub: LedgerServiceAsyncStub, value: str) -> None:
    account_id = await new_account(stub, grant=100)
    for method, request in requests(account_id, value):
        await getattr(stub, method)(request)
    got = await stub.GetAccount(pb.GetAccountRequest(account_id=account_id + "-x"))
    assert got.account.metadata["note"] == value
