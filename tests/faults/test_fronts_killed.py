"""SIGKILL of a front, and of the writer's front, under load (issue 19).

`ledger serve --fronts 3`: three processes on one port, one of them the
elected writer, the others forwarding to it. Twelve clients, each on its own
connection (so the kernel spreads them over the fronts), charge with fresh
keys and retry a key until it is answered, as a caller with a deadline does.
Meanwhile the writer's front is SIGKILLed, then another front. Every failed
attempt must be a clean UNAVAILABLE answered within the caller's deadline
(never INTERNAL, never a deadline run out: a front whose writer is gone
answers at once), the supervisor must start both fronts again, and every key
must have taken effect exactly once: the balance counts the acknowledged
charges, a replay of each is marked as a replay and changes nothing, and
`ledger verify` is clean.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from creditledger.v1 import ledger_pb2, ledger_pb2_grpc

from tests.faults.calls import ASSET, balance, funded_account, new_key, sync_stub
from tests.torture.rpc import CHANNEL_OPTIONS, CallResult, call_aio, call_sync
from tests.torture.server import LedgerServer, run_verify

FRONTS = 3
CLIENTS = 12
GRANTED = 10**6
ATTEMPT_DEADLINE_S = 10.0  # far above the 2 s a front waits for a writer it does not know
LOAD_BETWEEN_KILLS_S = 1.5

pytestmark = pytest.mark.timeout(240)


async def _writer_address(database_url: str) -> str:
    conn = await asyncpg.connect(database_url, timeout=5)
    try:
        address: str = await conn.fetchval("SELECT address FROM writer_lease WHERE id = 1")
        return address
    finally:
        await conn.close()


async def _all_fronts_up(pod: LedgerServer, database_url: str, timeout_s: float = 90) -> str:
    """Until every front runs and listens and the writer is one of them: its address."""
    deadline = time.monotonic() + timeout_s
    while True:
        pids = pod.front_pids()
        address = await _writer_address(database_url)
        if len(pids) == FRONTS and address in pids:
            for front in pids:
                await asyncio.to_thread(pod.wait_front_back, front, 0, 30.0)
            return address
        assert time.monotonic() < deadline, f"fronts {pids}, writer {address!r}"
        await asyncio.sleep(0.2)


async def _client(
    target: str,
    account: str,
    acked: list[str],
    failed: list[CallResult[Any]],
    stop: asyncio.Event,
) -> None:
    local = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]  # a connection of its own
    async with grpc.aio.insecure_channel(target, options=local) as channel:
        stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        while not stop.is_set():
            req = ledger_pb2.ChargeRequest(
                account_id=account, asset=ASSET, amount=1, idempotency_key=new_key("c")
            )
            for _ in range(100):  # the same key until it is answered
                result = await call_aio(stub.Charge, req, ATTEMPT_DEADLINE_S)
                if result.ok:
                    acked.append(req.idempotency_key)
                    break
                failed.append(result)
                if not result.outcome_unknown:
                    return  # an answer that is not "retry": the assertions report it
                await asyncio.sleep(0.05)


async def test_killed_fronts_lose_nothing_and_apply_nothing_twice(
    fresh_database_url: str, tmp_path: Path
) -> None:
    pod = LedgerServer(fresh_database_url, tmp_path / "fronts.log", fronts=FRONTS)
    await asyncio.to_thread(pod.start)
    try:
        writer = await _all_fronts_up(pod, fresh_database_url)
        with sync_stub(pod.target) as stub:
            account = await asyncio.to_thread(funded_account, stub, GRANTED)
        acked: list[str] = []
        failed: list[CallResult[Any]] = []
        stop = asyncio.Event()
        clients = [
            asyncio.create_task(_client(pod.target, account, acked, failed, stop))
            for _ in range(CLIENTS)
        ]
        await asyncio.sleep(LOAD_BETWEEN_KILLS_S)
        before_kills = len(acked)
        writer_pid = pod.kill_front(writer)
        assert writer_pid is not None, f"no live front at the writer's address {writer}"
        await asyncio.to_thread(pod.wait_front_back, writer, writer_pid)
        await asyncio.sleep(LOAD_BETWEEN_KILLS_S)
        other = next(a for a in pod.internal_addresses if a != writer)
        other_pid = pod.kill_front(other)
        assert other_pid is not None, f"no live front at {other}"
        await asyncio.to_thread(pod.wait_front_back, other, other_pid)
        await asyncio.sleep(LOAD_BETWEEN_KILLS_S)
        stop.set()
        await asyncio.gather(*clients)

        codes = Counter(f"{r.code.name}/{r.reason or '-'}" for r in failed)
        unclean = [
            f"{r.describe()} {r.message}"
            for r in failed
            if r.code != grpc.StatusCode.UNAVAILABLE and not r.outcome_unknown
        ]
        assert not unclean, unclean
        late = [r.describe() for r in failed if r.code == grpc.StatusCode.DEADLINE_EXCEEDED]
        assert not late, f"a front kept a caller until its deadline: {codes}"
        assert failed, "the kills met no call in flight: the test did not test"
        assert before_kills > CLIENTS and len(acked) > before_kills, (before_kills, len(acked))
        assert len(set(acked)) == len(acked)

        with sync_stub(pod.target) as stub:
            after = await asyncio.to_thread(balance, stub, account)
            assert (after.settled, after.available) == (len(acked), GRANTED - len(acked)), codes
            for key in acked[:: max(1, len(acked) // 40)]:  # replays change nothing
                req = ledger_pb2.ChargeRequest(
                    account_id=account, asset=ASSET, amount=1, idempotency_key=key
                )
                again = await asyncio.to_thread(call_sync, stub.Charge, req, ATTEMPT_DEADLINE_S)
                assert again.ok and again.replayed, again.describe()
            assert (await asyncio.to_thread(balance, stub, account)).settled == len(acked)
        assert len(pod.front_pids()) == FRONTS, "the supervisor started both fronts again"
    finally:
        await asyncio.to_thread(pod.stop)
    code, output = await asyncio.to_thread(run_verify, fresh_database_url)
    assert code == 0, output
