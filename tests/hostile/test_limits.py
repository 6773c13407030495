"""A limit on everything a caller controls, and the limit named in the refusal.

The caller must be able to fix the request from the error alone, so each
refusal is checked for the number (or its usual spelling) of the limit it hit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from creditledger.v1 import ledger_pb2, ledger_pb2_grpc

from tests.faults.calls import ASSET, balance, funded_account, new_key, sync_stub
from tests.torture.rpc import CHANNEL_OPTIONS, CallResult, call_aio, call_sync
from tests.torture.server import LedgerServer, run_verify

INT64_MAX = 2**63 - 1
AMOUNT_MAX = 10**15
LIVE_LOTS_PER_PAIR_MAX = 1000

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def stub(ledger_process: LedgerServer) -> Iterator[Any]:
    with sync_stub(ledger_process.target) as s:
        yield s


def error_text(result: CallResult[Any]) -> str:
    """Everything a caller sees of a refusal: message, ErrorInfo metadata, field violations."""
    return " ".join(
        [result.message, *(f"{k}={v}" for k, v in (result.error_metadata or {}).items())]
    )


def assert_refused(result: CallResult[Any], code: grpc.StatusCode, *spellings: str) -> None:
    assert result.code == code, f"{result.describe()}: {result.message}"
    text = error_text(result)
    assert any(s in text for s in spellings), (
        f"the limit ({' or '.join(spellings)}) is not named in: {text}"
    )


def test_oversized_message_is_refused_naming_the_limit(stub: Any) -> None:
    account = funded_account(stub, 1)
    req = ledger_pb2.CreateAccountRequest(
        account_id=account + "-big", metadata={"blob": "x" * 200_000}
    )
    result = call_sync(stub.CreateAccount, req, 10)
    assert result.code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT), (
        result.describe()
    )
    assert "65536" in result.message or "64 KiB" in result.message, result.message


@pytest.mark.parametrize(
    ("metadata", "spellings"),
    [
        ({f"k{i}": "v" for i in range(33)}, ("32",)),
        ({"k" * 65: "v"}, ("64",)),
        ({"k": "v" * 513}, ("512",)),
    ],
    ids=["33-entries", "key-65", "value-513"],
)
def test_metadata_limits(stub: Any, metadata: dict[str, str], spellings: tuple[str, ...]) -> None:
    account = funded_account(stub, 100)
    req = ledger_pb2.ReserveRequest(
        account_id=account, asset=ASSET, amount=1, idempotency_key=new_key(), metadata=metadata
    )
    assert_refused(call_sync(stub.Reserve, req, 10), grpc.StatusCode.INVALID_ARGUMENT, *spellings)
    create = ledger_pb2.CreateAccountRequest(account_id=account + "-m", metadata=metadata)
    assert_refused(
        call_sync(stub.CreateAccount, create, 10), grpc.StatusCode.INVALID_ARGUMENT, *spellings
    )


def test_page_size_over_1000(stub: Any) -> None:
    account = funded_account(stub, 1)
    req = ledger_pb2.ListEntriesRequest(account_id=account, page_size=1001)
    assert_refused(call_sync(stub.ListEntries, req, 10), grpc.StatusCode.INVALID_ARGUMENT, "1000")


def test_ttl_over_30_days(stub: Any) -> None:
    account = funded_account(stub, 100)
    req = ledger_pb2.ReserveRequest(
        account_id=account, asset=ASSET, amount=1, idempotency_key=new_key()
    )
    req.ttl.FromSeconds(30 * 86400 + 1)
    assert_refused(
        call_sync(stub.Reserve, req, 10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "30 days",
        "2592000",
        "30d",
    )


@pytest.mark.parametrize("method", ["Grant", "Reserve", "Charge"])
def test_amount_over_10_15(stub: Any, method: str) -> None:
    account = funded_account(stub, 100)
    cls = getattr(ledger_pb2, f"{method}Request")
    req = cls(account_id=account, asset=ASSET, amount=AMOUNT_MAX + 1, idempotency_key=new_key())
    assert_refused(
        call_sync(getattr(stub, method), req, 10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "10^15",
        "1000000000000000",
        "1e15",
        "1,000,000,000,000,000",
    )


@pytest.mark.slow
async def test_grants_past_the_lot_cap_are_refused_and_nothing_wraps(
    ledger_process: LedgerServer, fresh_database_url: str
) -> None:
    """Grants of 10^15 to one account until LIVE_LOTS_PER_PAIR_MAX: the next is refused,
    naming the limit. (1,000 x 10^15 < INT64_MAX: grants alone cannot wrap a balance any
    more; tests/unit/test_rules.py shows BALANCE_LIMIT_EXCEEDED for available + reserved.)"""
    with sync_stub(ledger_process.target) as s:
        account = await asyncio.to_thread(funded_account, s, AMOUNT_MAX)
    fits = LIVE_LOTS_PER_PAIR_MAX
    async with grpc.aio.insecure_channel(ledger_process.target, options=CHANNEL_OPTIONS) as channel:
        stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        sem = asyncio.Semaphore(64)

        async def grant() -> CallResult[Any]:
            async with sem:
                req = ledger_pb2.GrantRequest(
                    account_id=account, asset=ASSET, amount=AMOUNT_MAX, idempotency_key=new_key()
                )
                return await call_aio(stub.Grant, req, 60)

        results = await asyncio.gather(*(grant() for _ in range(fits - 1)))
        assert all(r.ok for r in results), {r.describe() for r in results if not r.ok}
        last = ledger_pb2.GrantRequest(
            account_id=account, asset=ASSET, amount=AMOUNT_MAX, idempotency_key=new_key()
        )
        refused = await call_aio(stub.Grant, last, 60)
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION, refused.describe()
    text = error_text(refused)
    assert "LIVE_LOTS_PER_PAIR_MAX" in text and str(fits) in text, text
    with sync_stub(ledger_process.target) as s:
        after = await asyncio.to_thread(balance, s, account)
    assert after.available == after.granted == fits * AMOUNT_MAX
    code, output = await asyncio.to_thread(run_verify, fresh_database_url)
    assert code == 0, output
