"""Issue 15, item 3: the rate limiter charges a request by its weight (legs and
bytes), and a caller without a rate of its own gets a non-zero default."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from creditledger.v1 import ledger_pb2_grpc

from ledger.app import App
from ledger.security import callers
from ledger.security.ratelimit import DEFAULT_BURST, DEFAULT_RATE_PER_S, WEIGHT_BYTES, Rate, weight
from ledger.security.tokens import new_token, token_hash_hex
from tests.security.conftest import _config, bearer, refusal

pytestmark = pytest.mark.timeout(120)


def test_weight_counts_legs_and_bytes() -> None:
    assert weight(0, 100) == 1
    assert weight(1, 100) == 1
    assert weight(100, 100) == 100
    assert weight(100, 10 * WEIGHT_BYTES) == 110


def test_a_caller_without_a_rate_gets_the_default_and_zero_must_be_written() -> None:
    entry = {
        "id": "svc",
        "permissions": ["read"],
        "account_prefixes": ["*"],
        "token_sha256": [token_hash_hex("t")],
    }
    (svc,) = callers.parse({"caller": [entry]}).callers
    assert svc.rate == Rate(DEFAULT_RATE_PER_S, DEFAULT_BURST) and svc.rate.limited
    (free,) = callers.parse({"caller": [{**entry, "rate_per_s": 0}]}).callers
    assert not free.rate.limited


async def test_a_heavy_request_costs_its_weight(database_url: str, tmp_path: Path) -> None:
    token = new_token()
    path = tmp_path / "callers.toml"
    path.write_text(
        f'[[caller]]\nid = "heavy"\npermissions = ["read", "spend"]\naccount_prefixes = ["*"]\n'
        f'token_sha256 = ["{token_hash_hex(token)}"]\nrate_per_s = 1\nburst = 250\n'
    )
    app = App(_config(database_url, callers_file=path))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            stub = ledger_pb2_grpc.LedgerServiceStub(ch)
            group = pb.ReserveGroupRequest(
                legs=[
                    pb.ReserveGroupLeg(
                        account_id="nobody-here", asset="crm_credits", amount=1, leg_key=f"l{i}"
                    )
                    for i in range(100)
                ],
                idempotency_key="weight-1",
            )
            codes = []
            for _ in range(3):
                try:
                    await stub.ReserveGroup(group, metadata=bearer(token), timeout=10)
                except grpc.aio.AioRpcError as exc:
                    codes.append(refusal(exc))
            # Two 100-leg groups fit a burst of 250; the third does not. As
            # requests (1 each) all three would have passed.
            assert [r.reason for r in codes[:2]] == ["ACCOUNT_NOT_FOUND"] * 2
            assert codes[2].reason == "RATE_LIMITED", codes[2]
            assert "weighs 100" in codes[2].message
            # A light call still passes on what is left of the burst.
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.GetAccount(
                    pb.GetAccountRequest(account_id="nobody-here"), metadata=bearer(token)
                )
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await app.stop()
