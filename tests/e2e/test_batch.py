"""SubmitBatch through the real server and stub: per-command outcomes in order,
atomic batches, replays and key reuse per command, concurrent duplicates, limits."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from google.rpc import error_details_pb2, status_pb2

from tests.conftest import key, new_account
from tests.support.rpc import error_info, field_violations, replayed
from tests.support.verify import assert_ledger_consistent

if TYPE_CHECKING:
    from creditledger.v1.ledger_pb2_grpc import LedgerServiceAsyncStub

ASSET = "crm_credits"
pytestmark = pytest.mark.timeout(60)


def charge(account: str, amount: int, k: str | None = None) -> pb.BatchCommand:
    return pb.BatchCommand(
        charge=pb.ChargeRequest(
            account_id=account, asset=ASSET, amount=amount, idempotency_key=k or key()
        )
    )


def reason_of(error: status_pb2.Status) -> tuple[str, dict[str, str]]:
    """The reason and metadata of a command's error, less the call's request id (each
    call has its own: a replay answers the first outcome under the new call's id)."""
    for detail in error.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason, {k: v for k, v in info.metadata.items() if k != "request_id"}
    raise AssertionError(f"no ErrorInfo in {error}")


async def available(stub: LedgerServiceAsyncStub, account: str) -> int:
    got = await stub.GetBalance(pb.GetBalanceRequest(account_id=account, asset=ASSET))
    return got.balance.available


async def test_mixed_commands_answer_each_in_order(stub: LedgerServiceAsyncStub) -> None:
    acct = await new_account(stub, grant=100)
    held = await stub.Reserve(
        pb.ReserveRequest(account_id=acct, asset=ASSET, amount=30, idempotency_key=key())
    )
    spent = await stub.Charge(
        pb.ChargeRequest(account_id=acct, asset=ASSET, amount=10, idempotency_key=key())
    )
    rid, cid = held.reservation.reservation_id, spent.reservation.reservation_id
    commands = [
        pb.BatchCommand(
            grant=pb.GrantRequest(account_id=acct, asset=ASSET, amount=5, idempotency_key=key())
        ),
        charge(acct, 7),
        charge(acct, 10**9),  # more than there is: this one fails, the others run
        pb.BatchCommand(
            reserve=pb.ReserveRequest(account_id=acct, asset=ASSET, amount=4, idempotency_key=key())
        ),
        pb.BatchCommand(
            settle=pb.SettleRequest(reservation_id=rid, amount=20, idempotency_key=key())
        ),
        pb.BatchCommand(release=pb.ReleaseRequest(reservation_id=rid, idempotency_key=key())),
        pb.BatchCommand(
            refund=pb.RefundRequest(reservation_id=cid, amount=3, idempotency_key=key())
        ),
        charge(acct, 0),  # invalid: answered INVALID_ARGUMENT on its own
        charge(f"{acct}-missing", 1),
    ]
    got = await stub.SubmitBatch(pb.SubmitBatchRequest(commands=commands))
    kinds = [o.WhichOneof("outcome") for o in got.outcomes]
    assert kinds == [
        "grant",
        "charge",
        "error",
        "reserve",
        "settle",
        "release",
        "refund",
        "error",
        "error",
    ]
    assert not any(o.replayed for o in got.outcomes)
    assert got.outcomes[0].grant.lot.amount == 5
    assert got.outcomes[1].charge.reservation.settled == 7
    assert got.outcomes[2].error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert reason_of(got.outcomes[2].error)[0] == "INSUFFICIENT_CREDITS"
    assert got.outcomes[4].settle.reservation.settled == 20
    assert got.outcomes[5].release.reservation.released == 10
    assert got.outcomes[6].refund.reservation.refunded == 3
    assert got.outcomes[7].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert reason_of(got.outcomes[8].error)[0] == "ACCOUNT_NOT_FOUND"
    # 100 - 30 held - 10 charged + 5 - 7 - 4 held + 10 released + 3 refunded
    assert await available(stub, acct) == 67
    again = (await stub.SubmitBatch(pb.SubmitBatchRequest(commands=commands[-1:]))).outcomes[0]
    assert again.replayed and reason_of(again.error) == reason_of(got.outcomes[-1].error)


async def test_atomic_batch_fails_whole_naming_the_index(stub: LedgerServiceAsyncStub) -> None:
    acct = await new_account(stub, grant=10)
    keys = [key() for _ in range(3)]
    request = pb.SubmitBatchRequest(
        commands=[charge(acct, 2, keys[0]), charge(acct, 3, keys[1]), charge(acct, 6, keys[2])],
        atomic=True,
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SubmitBatch(request)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    err = error_info(info.value)
    assert (err.reason, err.metadata["batch_index"]) == ("INSUFFICIENT_CREDITS", "2")
    assert "commands[2]" in (info.value.details() or "")
    assert await available(stub, acct) == 10  # the first two were rolled back with it
    # Nothing was recorded: after a top-up the same keys run, first time, in full.
    await stub.Grant(pb.GrantRequest(account_id=acct, asset=ASSET, amount=1, idempotency_key=key()))
    got = await stub.SubmitBatch(request)
    assert [o.WhichOneof("outcome") for o in got.outcomes] == ["charge"] * 3
    assert not any(o.replayed for o in got.outcomes)
    assert await available(stub, acct) == 0
    again = await stub.SubmitBatch(request)  # a replay of an atomic batch that succeeded
    assert all(o.replayed for o in again.outcomes)
    assert [o.charge for o in again.outcomes] == [o.charge for o in got.outcomes]


async def test_atomic_batch_names_an_invalid_field_by_its_path(
    stub: LedgerServiceAsyncStub,
) -> None:
    acct = await new_account(stub, grant=10)
    request = pb.SubmitBatchRequest(commands=[charge(acct, 1), charge(acct, 0)], atomic=True)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SubmitBatch(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(info.value) == ["commands[1].charge.amount"]
    assert error_info(info.value).metadata["batch_index"] == "1"
    assert await available(stub, acct) == 10


async def test_replay_of_a_batch_replays_every_command(stub: LedgerServiceAsyncStub) -> None:
    acct = await new_account(stub, grant=10)
    commands = [charge(acct, 1), charge(acct, 2), charge(acct, 100)]
    first = await stub.SubmitBatch(pb.SubmitBatchRequest(commands=commands))
    second = await stub.SubmitBatch(pb.SubmitBatchRequest(commands=commands))
    assert [o.replayed for o in first.outcomes] == [False] * 3
    assert [o.replayed for o in second.outcomes] == [True] * 3
    assert [o.charge for o in second.outcomes[:2]] == [o.charge for o in first.outcomes[:2]]
    a, b = first.outcomes[2].error, second.outcomes[2].error  # the recorded failure
    assert (a.code, a.message, reason_of(a)) == (b.code, b.message, reason_of(b))
    assert await available(stub, acct) == 7
    # A single call with a key from the batch replays it too, with the trailer.
    call = stub.Charge(commands[1].charge)
    single = await call
    assert replayed(await call.trailing_metadata())
    assert single == first.outcomes[1].charge


async def test_the_same_key_twice_in_one_batch_runs_once(stub: LedgerServiceAsyncStub) -> None:
    acct = await new_account(stub, grant=10)
    k = key()
    got = await stub.SubmitBatch(
        pb.SubmitBatchRequest(commands=[charge(acct, 4, k), charge(acct, 4, k), charge(acct, 5, k)])
    )
    assert [o.replayed for o in got.outcomes[:2]] == [False, True]
    assert got.outcomes[0].charge == got.outcomes[1].charge
    assert reason_of(got.outcomes[2].error)[0] == "IDEMPOTENCY_KEY_REUSED"
    assert await available(stub, acct) == 6


async def test_a_key_reused_for_another_request_is_refused_per_command(
    stub: LedgerServiceAsyncStub,
) -> None:
    acct = await new_account(stub, grant=10)
    k = key()
    await stub.Charge(pb.ChargeRequest(account_id=acct, asset=ASSET, amount=1, idempotency_key=k))
    got = await stub.SubmitBatch(
        pb.SubmitBatchRequest(commands=[charge(acct, 2), charge(acct, 3, k)])
    )
    assert got.outcomes[0].WhichOneof("outcome") == "charge"
    error = got.outcomes[1].error
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert reason_of(error) == ("IDEMPOTENCY_KEY_REUSED", {"first_method": "Charge"})
    assert await available(stub, acct) == 7


async def test_concurrent_duplicate_batches_apply_once(
    stub: LedgerServiceAsyncStub, database_url: str
) -> None:
    acct = await new_account(stub, grant=1000)
    for atomic in (False, True):
        commands = [charge(acct, 1 + i) for i in range(20)]
        request = pb.SubmitBatchRequest(commands=commands, atomic=atomic)
        replies = await asyncio.gather(*(stub.SubmitBatch(request) for _ in range(6)))
        ids = {tuple(o.charge.reservation.reservation_id for o in r.outcomes) for r in replies}
        assert len(ids) == 1  # every copy answers the same reservations
        firsts = [sum(not o.replayed for o in r.outcomes) for r in replies]
        assert sum(firsts) == 20  # each command ran once; every other copy replays it
    assert await available(stub, acct) == 1000 - 2 * sum(range(1, 21))
    await assert_ledger_consistent(database_url)


async def test_a_full_batch_of_1000_runs(stub: LedgerServiceAsyncStub) -> None:
    acct = await new_account(stub, grant=1000)
    got = await stub.SubmitBatch(
        pb.SubmitBatchRequest(commands=[charge(acct, 1) for _ in range(1000)])
    )
    assert [o.WhichOneof("outcome") for o in got.outcomes] == ["charge"] * 1000
    assert await available(stub, acct) == 0


async def test_limits_are_named(stub: LedgerServiceAsyncStub) -> None:
    acct = await new_account(stub, grant=10)
    too_many = pb.SubmitBatchRequest(commands=[charge(acct, 1) for _ in range(1001)])
    none: pb.SubmitBatchRequest = pb.SubmitBatchRequest()
    for request in (too_many, none):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SubmitBatch(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "BATCH_COMMANDS_MAX" in (info.value.details() or "")
        assert field_violations(info.value) == ["commands"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SubmitBatch(pb.SubmitBatchRequest(commands=[charge(acct, 1), pb.BatchCommand()]))
    assert field_violations(info.value) == ["commands[1]"]
    big = charge(acct, 1)
    big.charge.metadata["blob"] = "x" * 1100
    heavy = pb.SubmitBatchRequest(commands=[big] * 1000)
    assert 1024 * 1024 < heavy.ByteSize() < 2 * 1024 * 1024
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SubmitBatch(heavy)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "BATCH_BYTES_MAX" in (info.value.details() or "")
    assert await available(stub, acct) == 10
