"""Concurrent duplicates of every create, on one replica and split over two on one database.

32 CreateAccount calls of one id at once: exactly one OK, every other one
ALREADY_EXISTS (ACCOUNT_EXISTS); never INTERNAL (issue 13, item 5: 26 of 640
answered INTERNAL with a SerializationError from the create path). The same
idempotency key sent 32 times at once on Grant, Reserve, Charge and
ReserveGroup (and Settle, Release, Refund): one effect, 32 equal answers,
exactly one not marked replayed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from creditledger.v1 import ledger_pb2_grpc

from tests.faults.calls import ASSET, new_key
from tests.torture.fixtures import run_sync
from tests.torture.pg import create_database, drop_database
from tests.torture.rpc import CHANNEL_OPTIONS, CallResult, call_aio
from tests.torture.server import LedgerServer, run_verify

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

DUPLICATES = 32
ROUNDS = 20  # 640 creates per form, as in the issue


@pytest.fixture(scope="module")
def two_replicas(pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Two `ledger serve` processes on one fresh database (module-wide: starting is slow)."""
    url = run_sync(create_database(pg_admin_url, "ledger_dupes"))
    logs: Path = tmp_path_factory.mktemp("dupes")
    servers = [LedgerServer(url, logs / f"replica-{n}.log", name=f"replica-{n}") for n in (0, 1)]
    try:
        for s in servers:
            s.start()
        yield url, servers
    finally:
        for s in servers:
            s.stop()
        run_sync(drop_database(pg_admin_url, url))


async def all_at_once(
    targets: list[str], method: str, requests: list[Any]
) -> list[CallResult[Any]]:
    """Send request i to targets[i % len(targets)], all together; one channel per target."""
    channels = [grpc.aio.insecure_channel(t, options=CHANNEL_OPTIONS) for t in targets]
    try:
        stubs = [ledger_pb2_grpc.LedgerServiceStub(ch) for ch in channels]
        for ch in channels:
            await ch.channel_ready()
        start = asyncio.Event()

        async def one(i: int, request: Any) -> CallResult[Any]:
            await start.wait()
            return await call_aio(getattr(stubs[i % len(stubs)], method), request, 30)

        tasks = [asyncio.ensure_future(one(i, r)) for i, r in enumerate(requests)]
        await asyncio.sleep(0)
        start.set()
        return await asyncio.gather(*tasks)
    finally:
        for ch in channels:
            await ch.close()


def codes(results: list[CallResult[Any]]) -> Counter[str]:
    return Counter(r.describe() for r in results)


@pytest.mark.parametrize("spread", [1, 2], ids=["one-replica", "two-replicas"])
def test_concurrent_create_account_of_one_id(two_replicas: Any, spread: int) -> None:
    _, servers = two_replicas
    targets = [s.target for s in servers[:spread]]
    seen: Counter[str] = Counter()
    for _ in range(ROUNDS):
        account = f"dupe-{uuid.uuid4().hex[:12]}"
        request = pb.CreateAccountRequest(account_id=account, metadata={"k": "v"})
        results = asyncio.run(all_at_once(targets, "CreateAccount", [request] * DUPLICATES))
        seen += codes(results)
        got = codes(results)
        assert got == {"OK": 1, "ALREADY_EXISTS/ACCOUNT_EXISTS": DUPLICATES - 1}, got
    print("codes:", dict(seen))


def funded(target: str, amount: int) -> str:
    async def run() -> str:
        async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as ch:
            stub = ledger_pb2_grpc.LedgerServiceStub(ch)
            account = f"acct-{uuid.uuid4().hex[:12]}"
            await stub.CreateAccount(pb.CreateAccountRequest(account_id=account))
            await stub.Grant(
                pb.GrantRequest(
                    account_id=account, asset=ASSET, amount=amount, idempotency_key=new_key()
                )
            )
            return account

    return asyncio.run(run())


def one_effect(results: list[CallResult[Any]], what: str) -> Any:
    """Every answer OK and equal; exactly one of them not a replay. Returns the answer."""
    assert all(r.ok for r in results), f"{what}: {codes(results)}"
    assert sum(not r.replayed for r in results) == 1, (
        f"{what}: {sum(not r.replayed for r in results)} answers not marked replayed"
    )
    first = results[0].body
    assert all(r.body == first for r in results), f"{what}: answers differ"
    return first


@pytest.mark.parametrize("spread", [1, 2], ids=["one-replica", "two-replicas"])
def test_same_key_at_once_has_one_effect(two_replicas: Any, spread: int) -> None:
    url, servers = two_replicas
    targets = [s.target for s in servers[:spread]]
    account = funded(targets[0], 1000)
    other = funded(targets[-1], 1000)

    grant = pb.GrantRequest(account_id=account, asset=ASSET, amount=7, idempotency_key=new_key())
    lot = one_effect(asyncio.run(all_at_once(targets, "Grant", [grant] * DUPLICATES)), "Grant").lot
    reserve = pb.ReserveRequest(
        account_id=account, asset=ASSET, amount=5, idempotency_key=new_key()
    )
    held = one_effect(
        asyncio.run(all_at_once(targets, "Reserve", [reserve] * DUPLICATES)), "Reserve"
    )
    charge = pb.ChargeRequest(account_id=account, asset=ASSET, amount=3, idempotency_key=new_key())
    one_effect(asyncio.run(all_at_once(targets, "Charge", [charge] * DUPLICATES)), "Charge")
    group = pb.ReserveGroupRequest(idempotency_key=new_key())
    group.legs.add(account_id=account, asset=ASSET, amount=2, leg_key="a")
    group.legs.add(account_id=other, asset=ASSET, amount=4, leg_key="b")
    one_effect(
        asyncio.run(all_at_once(targets, "ReserveGroup", [group] * DUPLICATES)), "ReserveGroup"
    )
    # And the commands on a reservation: settle 1, release 1, refund 1, each once.
    rid = held.reservation.reservation_id
    for method, request in [
        ("Settle", pb.SettleRequest(reservation_id=rid, amount=1, idempotency_key=new_key())),
        ("Release", pb.ReleaseRequest(reservation_id=rid, amount=1, idempotency_key=new_key())),
        ("Refund", pb.RefundRequest(reservation_id=rid, amount=1, idempotency_key=new_key())),
    ]:
        after = one_effect(
            asyncio.run(all_at_once(targets, method, [request] * DUPLICATES)), method
        ).reservation
    assert (after.settled, after.released, after.refunded) == (1, 1, 1), after

    async def balances() -> tuple[Any, Any]:
        async with grpc.aio.insecure_channel(targets[0], options=CHANNEL_OPTIONS) as ch:
            stub = ledger_pb2_grpc.LedgerServiceStub(ch)
            a = await stub.GetBalance(pb.GetBalanceRequest(account_id=account, asset=ASSET))
            b = await stub.GetBalance(pb.GetBalanceRequest(account_id=other, asset=ASSET))
            return a.balance, b.balance

    mine, theirs = asyncio.run(balances())
    assert lot.amount == 7 and held.reservation.amount == 5
    assert (mine.granted, mine.reserved, mine.settled) == (1007, 3 + 2, 3 + 1), mine
    assert (theirs.granted, theirs.reserved) == (1000, 4), theirs
    code, output = run_verify(url)
    assert code == 0, output
