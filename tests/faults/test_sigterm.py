"""SIGTERM during load: in-flight calls complete or fail cleanly; nothing acknowledged is lost.

Many clients charge and reserve with fresh keys while the server is told to
stop. Every answer must be OK, a business refusal, or a clean "go elsewhere"
(UNAVAILABLE, CANCELLED, DEADLINE_EXCEEDED), never INTERNAL/UNKNOWN; the
process must exit by itself within its drain time; and after a restart every
acknowledged operation is there, and the unknown ones resolve by replaying
their keys.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from creditledger.v1 import ledger_pb2, ledger_pb2_grpc

from tests.faults.calls import ASSET, balance, funded_account, new_key, sync_stub
from tests.torture.rpc import CHANNEL_OPTIONS, CallResult, call_aio, call_sync
from tests.torture.server import LedgerServer, run_verify

CLIENTS = 24
LOAD_BEFORE_TERM_S = 1.5
EXIT_TIMEOUT_S = 30.0
CLEAN_FAILURES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}

pytestmark = pytest.mark.timeout(240)


@dataclass
class Sent:
    method: str
    request: Any
    result: CallResult[Any] | None = None


async def client_loop(
    target: str, accounts: list[str], seed: int, sent: list[Sent], stop: asyncio.Event
) -> None:
    rng = random.Random(seed)
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        while not stop.is_set():
            account, amount = rng.choice(accounts), rng.randint(1, 5)
            if rng.random() < 0.5:
                item = Sent(
                    "Charge",
                    ledger_pb2.ChargeRequest(
                        account_id=account, asset=ASSET, amount=amount, idempotency_key=new_key()
                    ),
                )
            else:
                req = ledger_pb2.ReserveRequest(
                    account_id=account, asset=ASSET, amount=amount, idempotency_key=new_key()
                )
                req.ttl.FromSeconds(3600)
                item = Sent("Reserve", req)
            sent.append(item)
            item.result = await call_aio(getattr(stub, item.method), item.request, 5.0)
            if not item.result.ok:
                return  # the server is going away: this client stops like a real one would


async def test_sigterm_under_load_loses_nothing(
    ledger_process: LedgerServer, fresh_database_url: str
) -> None:
    server = ledger_process
    with sync_stub(server.target) as stub:
        accounts = [await asyncio.to_thread(funded_account, stub, 10**6) for _ in range(4)]
    sent: list[Sent] = []
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(client_loop(server.target, accounts, i, sent, stop))
        for i in range(CLIENTS)
    ]
    await asyncio.sleep(LOAD_BEFORE_TERM_S)
    started = time.monotonic()
    exit_code = await asyncio.to_thread(server.terminate, EXIT_TIMEOUT_S)
    stop.set()
    await asyncio.gather(*tasks)
    assert exit_code == 0, (
        f"exit code {exit_code} after {time.monotonic() - started:.1f}s:\n{server.log_tail()}"
    )

    bad = [
        s
        for s in sent
        if s.result is not None and not s.result.ok and s.result.code not in CLEAN_FAILURES
    ]
    assert not bad, [
        f"{s.method}: {s.result.describe()} {s.result.message}" for s in bad if s.result
    ]
    acked = [s for s in sent if s.result is not None and s.result.ok]
    unknown = [s for s in sent if s.result is None or not s.result.ok]
    assert len(acked) > CLIENTS, "too little load reached the server before SIGTERM"

    server.start()
    with sync_stub(server.target) as stub:
        for s in unknown:  # resolve: the same key gives the one true outcome
            for _ in range(50):
                result = await asyncio.to_thread(_call, stub, s)
                if not result.outcome_unknown:
                    break
                await asyncio.sleep(0.2)
            assert result.ok, (
                f"{s.method} replayed after restart: {result.describe()} {result.message}"
            )
            s.result = result
        for s in acked:
            rid = s.result.body.reservation.reservation_id if s.result else ""
            got = stub.GetReservation(
                ledger_pb2.GetReservationRequest(reservation_id=rid), timeout=5
            )
            assert got.reservation.amount == s.request.amount, f"acknowledged {s.method} {rid} lost"
        for account in accounts:
            mine = [s for s in sent if s.request.account_id == account and s.result is not None]
            charged = sum(s.request.amount for s in mine if s.method == "Charge")
            reserved = sum(s.request.amount for s in mine if s.method == "Reserve")
            after = await asyncio.to_thread(balance, stub, account)
            assert (after.settled, after.reserved) == (charged, reserved), account
            assert after.available == 10**6 - charged - reserved
    code, output = await asyncio.to_thread(run_verify, fresh_database_url)
    assert code == 0, output


def _call(stub: Any, s: Sent) -> CallResult[Any]:
    return call_sync(getattr(stub, s.method), s.request, 5.0)
