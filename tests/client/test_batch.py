"""The Python clients' submit_batch and batchers against the real server: each
caller gets its own outcome, failures are typed per command, retries replay."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from creditledger_client import (
    IdempotencyKeyReused,
    InsufficientCredits,
    LedgerClient,
    ReservationResult,
    SyncLedgerClient,
)
from creditledger_client import batch as b

from tests.conftest import RunningServer

ASSET = "crm_credits"
pytestmark = pytest.mark.timeout(60)


async def funded(client: LedgerClient, amount: int) -> str:
    account = f"client-batch-{uuid.uuid4().hex[:10]}"
    await client.create_account(account)
    await client.grant(account, ASSET, amount)
    return account


async def test_submit_batch_answers_each_command(ledger_server: RunningServer) -> None:
    async with LedgerClient(ledger_server.target) as client:
        account = await funded(client, 10)
        commands: list[b.Command] = [
            b.charge(account, ASSET, 4),
            b.charge(account, ASSET, 40),
            b.grant(account, ASSET, 1),
        ]
        outcomes = await client.submit_batch(commands)
        assert [o.ok for o in outcomes] == [True, False, True]
        assert isinstance(outcomes[1].error, InsufficientCredits)
        assert outcomes[1].error.metadata["requested"] == "40"
        again = await client.submit_batch(commands)  # the same keys: every command replays
        assert [o.replayed for o in again] == [True, True, True]
        first = outcomes[0].unwrap()
        assert isinstance(first, ReservationResult)
        assert again[0].unwrap() == ReservationResult(first.reservation, first.balance, True, 4)
        with pytest.raises(InsufficientCredits) as info:
            await client.submit_batch(
                [b.charge(account, ASSET, 1), b.charge(account, ASSET, 40)], atomic=True
            )
        assert info.value.metadata["batch_index"] == "1"
        assert (await client.get_balance(account, ASSET)).balance.available == 7


async def test_batcher_resolves_each_callers_own_outcome(ledger_server: RunningServer) -> None:
    async with LedgerClient(ledger_server.target) as client:
        account = await funded(client, 50)
        key = uuid.uuid4().hex
        async with client.batcher(max_commands=16, max_delay_ms=20) as batcher:
            results = await asyncio.gather(
                *(batcher.charge(account, ASSET, 1) for _ in range(40)),
                batcher.charge(account, ASSET, 1000),  # more than there is
                batcher.charge(account, ASSET, 2, idempotency_key=key),
                batcher.charge(account, ASSET, 3, idempotency_key=key),  # the key, reused
                return_exceptions=True,
            )
        charged = results[:40]
        assert all(isinstance(r, ReservationResult) and r.reservation.settled == 1 for r in charged)
        assert len({r.reservation.reservation_id for r in charged}) == 40  # type: ignore[union-attr]
        assert isinstance(results[40], InsufficientCredits)
        assert isinstance(results[41], ReservationResult)
        assert isinstance(results[42], IdempotencyKeyReused)
        balance = await client.get_balance(account, ASSET)
        assert balance.balance.available == 50 - 40 - 2


async def test_sync_batcher_resolves_futures(ledger_server: RunningServer) -> None:
    # The server runs on this test's event loop: the blocking client gets a thread.
    await asyncio.to_thread(_sync_batcher, ledger_server.target)


def _sync_batcher(target: str) -> None:
    with SyncLedgerClient(target) as client:
        account = f"client-batch-{uuid.uuid4().hex[:10]}"
        client.create_account(account)
        client.grant(account, ASSET, 5)
        with client.batcher(max_commands=4, max_delay_ms=10) as batcher:
            futures = [batcher.charge(account, ASSET, 1) for _ in range(6)]
        results = [f.exception() or f.result() for f in futures]
        assert sum(isinstance(r, ReservationResult) for r in results) == 5
        assert sum(isinstance(r, InsufficientCredits) for r in results) == 1
        assert client.get_balance(account, ASSET).balance.available == 0
