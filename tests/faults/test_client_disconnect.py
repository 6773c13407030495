"""A client that goes away mid-call leaves no half-done effect and no stuck lock.

The call is caught in the middle of its transaction by holding the server's
database traffic at the proxy; the client then cancels the call or drops its
whole connection. The retry with the same key, on a new connection, must get
the one true outcome, and the ledger must show exactly one effect per key.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from creditledger.v1 import ledger_pb2, ledger_pb2_grpc

from tests.faults.calls import ASSET, all_entries, balance, funded_account, new_key, sync_stub
from tests.faults.proxy import TcpProxy
from tests.torture.rpc import CHANNEL_OPTIONS, CallResult, call_aio
from tests.torture.server import LedgerServer, run_verify

ROUNDS = 24
AMOUNT = 7

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def proxied(fresh_database_url: str, tmp_path: Path) -> Iterator[tuple[LedgerServer, TcpProxy]]:
    proxy = TcpProxy.for_database(fresh_database_url)
    proxy.start()
    server = LedgerServer(proxy.url_for(fresh_database_url), tmp_path / "server.log")
    server.start()
    yield server, proxy
    server.stop()
    proxy.close()


async def abandon(
    target: str, request: Any, how: str, after_s: float, proxy: TcpProxy, hold: bool
) -> None:
    """Start a Reserve and walk away from it after `after_s`."""
    channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
    stub = ledger_pb2_grpc.LedgerServiceStub(channel)
    if hold:
        await asyncio.to_thread(proxy.pause)
    try:
        call = stub.Reserve(request, timeout=30)
        await asyncio.sleep(after_s)
        if how == "cancel":
            call.cancel()
        else:
            await channel.close(grace=None)
    finally:
        if hold:
            await asyncio.to_thread(proxy.resume)
        await channel.close()


async def retry_until_known(target: str, request: Any) -> CallResult[Any]:
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        for _ in range(60):
            result = await call_aio(stub.Reserve, request, 5)
            if not result.outcome_unknown:
                return result
            await asyncio.sleep(0.25)
    raise AssertionError(f"no definitive answer for {request.idempotency_key}")


async def test_abandoned_calls_have_one_outcome_each(
    proxied: tuple[LedgerServer, TcpProxy], fresh_database_url: str
) -> None:
    server, proxy = proxied
    rng = random.Random(5)
    with sync_stub(server.target) as stub:
        account = await asyncio.to_thread(funded_account, stub, AMOUNT * ROUNDS + 1000)
    outcomes: dict[str, str] = {}
    for round_no in range(ROUNDS):
        request = ledger_pb2.ReserveRequest(
            account_id=account, asset=ASSET, amount=AMOUNT, idempotency_key=new_key("abandon")
        )
        request.ttl.FromSeconds(3600)
        how = "cancel" if round_no % 2 == 0 else "disconnect"
        hold = round_no % 3 != 2  # a third of the rounds walk away at a random point instead
        await abandon(server.target, request, how, rng.uniform(0.0, 0.4), proxy, hold)
        result = await retry_until_known(server.target, request)
        assert result.ok, f"round {round_no}: {result.describe()} {result.message}"
        again = await retry_until_known(server.target, request)
        assert again.ok and again.replayed, "the second retry must replay the first outcome"
        assert again.body.reservation.reservation_id == result.body.reservation.reservation_id
        outcomes[request.idempotency_key] = result.body.reservation.reservation_id

    with sync_stub(server.target) as stub:
        # No stuck lock: a new command on the same account goes through at once.
        charge = ledger_pb2.ChargeRequest(
            account_id=account, asset=ASSET, amount=1, idempotency_key=new_key()
        )
        charged = await asyncio.to_thread(lambda: stub.Charge.with_call(charge, timeout=5))
        assert charged[0].reservation.settled == 1
        after = await asyncio.to_thread(balance, stub, account)
        entries = await asyncio.to_thread(all_entries, stub, account)
    assert after.reserved == AMOUNT * ROUNDS, "an abandoned call left a second (or no) hold"
    reserved_ids = {
        e.reservation_id
        for e in entries
        if e.movement == ledger_pb2.Entry.Movement.MOVEMENT_RESERVE and e.reservation_id
    }
    charge_id = charged[0].reservation.reservation_id
    assert reserved_ids - {charge_id} == set(outcomes.values())
    code, output = await asyncio.to_thread(run_verify, fresh_database_url)
    assert code == 0, output
