"""Idempotency keys: replay, mismatch, concurrent duplicates, business failures replayed."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from creditledger.v1.ledger_pb2_grpc import LedgerServiceAsyncStub

import asyncio
from datetime import timedelta

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb

from tests.conftest import RunningServer, key, new_account
from tests.support.rpc import error_info, replayed
from tests.support.verify import assert_ledger_consistent


async def call_with_trailers(method: object, request: object) -> tuple[object, bool]:
    call = method(request)  # type: ignore[operator]
    response = await call
    return response, replayed(await call.trailing_metadata())


async def test_same_key_same_request_replays_without_effect(stub: LedgerServiceAsyncStub) -> None:
    acct = await new_account(stub, grant=10)
    k = key()
    req = pb.ChargeRequest(account_id=acct, asset="crm_credits", amount=3, idempotency_key=k)
    first, was_replay = await call_with_trailers(stub.Charge, req)
    assert not was_replay
    for _ in range(3):
        again, was_replay = await call_with_trailers(stub.Charge, req)
        assert was_replay
        assert again == first  # the same reply, byte for byte
    bal = await stub.GetBalance(pb.GetBalanceRequest(account_id=acct, asset="crm_credits"))
    assert bal.balance.available == 7


async def test_replay_of_every_mutating_method(stub: LedgerServiceAsyncStub) -> None:
    acct = await new_account(stub, grant=100)
    grant = pb.GrantRequest(account_id=acct, asset="crm_credits", amount=5, idempotency_key=key())
    reserve = pb.ReserveRequest(
        account_id=acct, asset="crm_credits", amount=20, idempotency_key=key()
    )
    r, _ = await call_with_trailers(stub.Reserve, reserve)
    rid = r.reservation.reservation_id  # type: ignore[attr-defined]
    settle = pb.SettleRequest(reservation_id=rid, amount=5, idempotency_key=key())
    release = pb.ReleaseRequest(reservation_id=rid, amount=5, idempotency_key=key())
    refund = pb.RefundRequest(reservation_id=rid, amount=2, idempotency_key=key())
    group = pb.ReserveGroupRequest(
        legs=[pb.ReserveGroupLeg(account_id=acct, asset="crm_credits", amount=1, leg_key="x")],
        idempotency_key=key(),
    )
    for method, req in (
        (stub.Grant, grant),
        (stub.Settle, settle),
        (stub.Release, release),
        (stub.Refund, refund),
        (stub.ReserveGroup, group),
        (stub.Reserve, reserve),
    ):
        first, _ = await call_with_trailers(method, req)
        second, was_replay = await call_with_trailers(method, req)
        assert was_replay, method
        assert second == first or method is stub.Reserve
    bal = await stub.GetBalance(pb.GetBalanceRequest(account_id=acct, asset="crm_credits"))
    # 100 + 5 granted; 20 held: 5 settled, 5 released, 2 refunded; 1 held by the group leg
    assert (bal.balance.available, bal.balance.reserved) == (100 + 5 - 20 + 5 + 2 - 1, 10 + 1)


async def test_same_key_different_request_is_refused(stub: LedgerServiceAsyncStub) -> None:
    acct = await new_account(stub, grant=10)
    k = key()
    await stub.Charge(
        pb.ChargeRequest(account_id=acct, asset="crm_credits", amount=1, idempotency_key=k)
    )
    for other in (
        stub.Charge(
            pb.ChargeRequest(account_id=acct, asset="crm_credits", amount=2, idempotency_key=k)
        ),
        stub.Charge(
            pb.ChargeRequest(
                account_id=acct,
                asset="crm_credits",
                amount=1,
                idempotency_key=k,
                metadata={"x": "y"},
            )
        ),
        stub.Reserve(
            pb.ReserveRequest(account_id=acct, asset="crm_credits", amount=1, idempotency_key=k)
        ),
        stub.Grant(
            pb.GrantRequest(account_id=acct, asset="crm_credits", amount=1, idempotency_key=k)
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await other
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_info(err.value).reason == "IDEMPOTENCY_KEY_REUSED"
    bal = await stub.GetBalance(pb.GetBalanceRequest(account_id=acct, asset="crm_credits"))
    assert bal.balance.available == 9


async def test_business_failure_is_final_for_its_key(stub: LedgerServiceAsyncStub) -> None:
    """A late duplicate can never charge for an image that was never shown."""
    acct = await new_account(stub, "email")
    req = pb.ChargeRequest(account_id=acct, asset="image_opens", amount=1, idempotency_key=key())
    with pytest.raises(grpc.aio.AioRpcError) as first:
        await stub.Charge(req)
    assert error_info(first.value).reason == "INSUFFICIENT_CREDITS"
    await stub.Grant(
        pb.GrantRequest(account_id=acct, asset="image_opens", amount=100, idempotency_key=key())
    )
    call = stub.Charge(req)
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await call
    assert error_info(again.value).reason == "INSUFFICIENT_CREDITS"
    assert replayed(again.value.trailing_metadata())
    bal = await stub.GetBalance(pb.GetBalanceRequest(account_id=acct, asset="image_opens"))
    assert (bal.balance.available, bal.balance.settled) == (100, 0)


async def test_concurrent_duplicates_execute_once(
    stub: LedgerServiceAsyncStub, database_url: str
) -> None:
    acct = await new_account(stub, grant=1000)
    reqs = [
        pb.ChargeRequest(account_id=acct, asset="crm_credits", amount=7, idempotency_key=key())
        for _ in range(20)
    ]
    calls = [stub.Charge(r) for r in reqs for _ in range(10)]  # each key sent 10 times at once
    results = await asyncio.gather(*calls)
    by_key: dict[str, set[str]] = {}
    for req, res in zip([r for r in reqs for _ in range(10)], results, strict=True):
        by_key.setdefault(req.idempotency_key, set()).add(res.reservation.reservation_id)
    assert all(
        len(ids) == 1 for ids in by_key.values()
    )  # one effect per key, seen by every duplicate
    bal = await stub.GetBalance(pb.GetBalanceRequest(account_id=acct, asset="crm_credits"))
    assert bal.balance.available == 1000 - 20 * 7
    await assert_ledger_consistent(database_url)


async def test_keys_are_scoped_per_caller_in_storage(database_url: str) -> None:
    """The scope is a column: the same key under two callers is two records.
    (Each time partition's primary key; across partitions, see
    tests/integration/test_idempotency_retention.py.)"""
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        pks = await conn.fetch(
            "SELECT string_agg(a.attname, ',' ORDER BY array_position(i.indkey, a.attnum)) FROM pg_index i"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
            " WHERE i.indrelid IN (SELECT inhrelid FROM pg_inherits"
            " WHERE inhparent = 'idempotency'::regclass) AND i.indisprimary GROUP BY i.indrelid"
        )
    finally:
        await conn.close()
    assert pks, "the key table has partitions"
    assert {r[0] for r in pks} == {"caller,key"}


async def test_keys_are_pruned_after_the_retention(
    stub: LedgerServiceAsyncStub, ledger_server: RunningServer
) -> None:
    acct = await new_account(stub, grant=10)
    req = pb.ChargeRequest(account_id=acct, asset="crm_credits", amount=1, idempotency_key=key())
    first = await stub.Charge(req)
    ledger_server.clock.advance(timedelta(days=6))
    await ledger_server.app.sweeper.maintain_once()
    kept = await stub.Charge(req)
    assert (
        kept.reservation.reservation_id == first.reservation.reservation_id
    )  # still a replay at 6 days
    ledger_server.clock.advance(timedelta(days=2))
    # Expired: absent to the lookup at once, and its partition goes at the next round
    # (this one, or the sweeper's own if it holds the maintenance lock just now).
    await ledger_server.app.sweeper.maintain_once()
    again = await stub.Charge(req)  # past retention the key is new again: documented
    assert again.reservation.reservation_id != first.reservation.reservation_id
    assert again.balance.available == 8
