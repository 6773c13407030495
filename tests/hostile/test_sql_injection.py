"""Quotes and SQL fragments in ids, keys and metadata are data: stored and returned verbatim.

Account ids allow only [A-Za-z0-9._:@-], so fragments there are either refused
(INVALID_ARGUMENT) or, for the characters allowed (`-`, `:`, `@`, `.`), kept as
they are; everything free-form (metadata, keys, sources, reasons) must come
back byte for byte, and the tables must still be there afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from creditledger.v1 import ledger_pb2

from tests.faults.calls import ASSET, funded_account, sync_stub
from tests.torture.rpc import call_sync
from tests.torture.server import LedgerServer, run_verify

FRAGMENTS = [
    "'; DROP TABLE entries; --",
    '" OR "1"="1',
    "' OR '1'='1' --",
    "x'); DELETE FROM balances WHERE ('a'='a",
    "$1 $2 ::text",
    "%s %(name)s {0}",
    "\\'; SELECT pg_sleep(10); --",
    "Robert'); DROP TABLE accounts;--",
    "/* comment */ UNION SELECT * FROM idempotency --",
    "é ü 中文 \U0001f4b3 \u202e",
]

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def stub(ledger_process: LedgerServer) -> Iterator[Any]:
    with sync_stub(ledger_process.target) as s:
        yield s


def ok(result: Any) -> Any:
    assert result.ok, f"{result.describe()}: {result.message}"
    return result.body


def test_fragments_in_metadata_keys_sources_and_reasons_round_trip(
    stub: Any, fresh_database_url: str
) -> None:
    metadata = {f"k{i}'\"--": value for i, value in enumerate(FRAGMENTS)}
    account_id = "acct--x:y@z.w--1"  # SQL comment dashes, within the id alphabet
    created = ok(
        call_sync(
            stub.CreateAccount,
            ledger_pb2.CreateAccountRequest(account_id=account_id, metadata=metadata),
            10,
        )
    )
    assert created.account.account_id == account_id
    assert dict(created.account.metadata) == metadata
    assert (
        dict(
            ok(
                call_sync(stub.GetAccount, ledger_pb2.GetAccountRequest(account_id=account_id), 10)
            ).account.metadata
        )
        == metadata
    )

    for i, fragment in enumerate(FRAGMENTS):
        key = f"{fragment}-{i}"[:128] if fragment.isascii() else f"key-{i}-'\"--"
        grant = ledger_pb2.GrantRequest(
            account_id=account_id, asset=ASSET, amount=10, idempotency_key=key,
            source=fragment[:64], metadata={"why": fragment},
        )  # fmt: skip
        granted = ok(call_sync(stub.Grant, grant, 10))
        assert granted.lot.source == fragment[:64]
        replay = call_sync(stub.Grant, grant, 10)
        assert replay.ok and replay.replayed, f"key {key!r} did not replay"

    reserve = ledger_pb2.ReserveRequest(
        account_id=account_id, asset=ASSET, amount=20, idempotency_key="r'\"; --", metadata=metadata
    )
    reservation = ok(call_sync(stub.Reserve, reserve, 10)).reservation
    assert dict(reservation.metadata) == metadata
    fetched = ok(
        call_sync(
            stub.GetReservation,
            ledger_pb2.GetReservationRequest(reservation_id=reservation.reservation_id),
            10,
        )
    )
    assert dict(fetched.reservation.metadata) == metadata
    ok(
        call_sync(
            stub.Settle,
            ledger_pb2.SettleRequest(
                reservation_id=reservation.reservation_id,
                amount=20,
                final=True,
                idempotency_key="s' OR 1=1",
            ),
            10,
        )
    )
    for fragment in FRAGMENTS:
        refund = ledger_pb2.RefundRequest(
            reservation_id=reservation.reservation_id,
            amount=1,
            idempotency_key=f"rf-{abs(hash(fragment))}",
            reason=fragment,
        )
        ok(call_sync(stub.Refund, refund, 10))
    balance = ok(
        call_sync(
            stub.GetBalance, ledger_pb2.GetBalanceRequest(account_id=account_id, asset=ASSET), 10
        )
    ).balance
    assert (balance.granted, balance.settled, balance.refunded) == (
        10 * len(FRAGMENTS),
        20,
        len(FRAGMENTS),
    )
    code, output = run_verify(fresh_database_url)
    assert code == 0, output


@pytest.mark.parametrize("fragment", FRAGMENTS)
def test_fragments_as_ids_are_refused_or_not_found(stub: Any, fragment: str) -> None:
    """An id with SQL in it never matches anything by accident and never breaks a query."""
    funded_account(stub, 1)  # there is data a bad query could return
    checks = [
        (stub.GetAccount, ledger_pb2.GetAccountRequest(account_id=fragment)),
        (stub.GetBalance, ledger_pb2.GetBalanceRequest(account_id=fragment, asset=ASSET)),
        (stub.GetBalance, ledger_pb2.GetBalanceRequest(account_id="acct-x", asset=fragment)),
        (stub.ListEntries, ledger_pb2.ListEntriesRequest(account_id=fragment)),
        (stub.ListEntries, ledger_pb2.ListEntriesRequest(account_id="acct-x", page_token=fragment)),
        (stub.GetReservation, ledger_pb2.GetReservationRequest(reservation_id=fragment)),
        (stub.GetReservationGroup, ledger_pb2.GetReservationGroupRequest(group_id=fragment)),
        (stub.CreateAccount, ledger_pb2.CreateAccountRequest(account_id=fragment)),
    ]
    for method, request in checks:
        result = call_sync(method, request, 10)
        assert result.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), (
            f"{type(request).__name__} with {fragment!r}: {result.describe()} {result.message}"
        )
