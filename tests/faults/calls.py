"""Small helpers for the fault tests: stubs, keys, an account with credits."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from creditledger.v1 import ledger_pb2, ledger_pb2_grpc

from tests.torture.rpc import CHANNEL_OPTIONS, CallResult, call_sync

ASSET = "crm_credits"


def new_key(prefix: str = "k") -> str:
    return f"{prefix}-{uuid.uuid4()}"


@contextmanager
def sync_stub(target: str) -> Iterator[Any]:
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        yield ledger_pb2_grpc.LedgerServiceStub(channel)


def until_definitive(
    method: Any, request: Any, timeout_s: float = 60, deadline_s: float = 5
) -> CallResult[Any]:
    """Retry with the same request (and key) until the answer is not an unknown outcome."""
    give_up = time.monotonic() + timeout_s
    while True:
        result = call_sync(method, request, deadline_s)
        if not result.outcome_unknown or time.monotonic() > give_up:
            return result
        time.sleep(0.2)


def funded_account(stub: Any, amount: int, asset: str = ASSET) -> str:
    """A new account holding `amount` of `asset`."""
    account = f"acct-{uuid.uuid4().hex[:12]}"
    created = until_definitive(
        stub.CreateAccount, ledger_pb2.CreateAccountRequest(account_id=account)
    )
    assert created.ok, created.describe()
    grant = ledger_pb2.GrantRequest(
        account_id=account, asset=asset, amount=amount, idempotency_key=new_key("grant")
    )
    granted = until_definitive(stub.Grant, grant)
    assert granted.ok, granted.describe()
    return account


def balance(stub: Any, account: str, asset: str = ASSET) -> Any:
    result = until_definitive(
        stub.GetBalance, ledger_pb2.GetBalanceRequest(account_id=account, asset=asset)
    )
    assert result.ok, result.describe()
    body: Any = result.response
    return body.balance


def all_entries(stub: Any, account: str) -> list[Any]:
    entries: list[Any] = []
    token = ""
    while True:
        req = ledger_pb2.ListEntriesRequest(account_id=account, page_size=1000, page_token=token)
        page = until_definitive(stub.ListEntries, req)
        assert page.ok, page.describe()
        body: Any = page.response
        entries.extend(body.entries)
        token = body.next_page_token
        if not token:
            return entries
