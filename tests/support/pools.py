"""Account helpers of the shared-pool tests (tests/e2e/test_pools.py and
test_pool_split.py): accounts in a pool tree and the spends they make, through
the real stub of a ServerThread, in one asset."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from google.protobuf import duration_pb2

from tests.support.manual_server import ServerThread

ASSET = "sms"


def key() -> str:
    return uuid.uuid4().hex


def create(s: ServerThread, parent: str = "", grant: int = 0, prefix: str = "pool") -> str:
    acct = f"{prefix}-{uuid.uuid4().hex[:12]}"
    s.stub.CreateAccount(pb.CreateAccountRequest(account_id=acct, parent_id=parent))
    if grant:
        s.stub.Grant(
            pb.GrantRequest(account_id=acct, asset=ASSET, amount=grant, idempotency_key=key())
        )
    return acct


def view(s: ServerThread, acct: str) -> pb.GetBalanceResponse:
    return s.stub.GetBalance(pb.GetBalanceRequest(account_id=acct, asset=ASSET))


def charge(s: ServerThread, acct: str, amount: int, mode: Any = 0) -> pb.ChargeResponse:
    return s.stub.Charge(
        pb.ChargeRequest(
            account_id=acct, asset=ASSET, amount=amount, idempotency_key=key(), overage=mode
        )
    )


def reserve(s: ServerThread, acct: str, amount: int, ttl_s: int = 900) -> pb.ReserveResponse:
    return s.stub.Reserve(
        pb.ReserveRequest(
            account_id=acct, asset=ASSET, amount=amount, idempotency_key=key(),
            ttl=duration_pb2.Duration(seconds=ttl_s),
        )
    )  # fmt: skip


def refused(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value
