"""The reservation helper against the real server: delivered work is paid for, reruns replay."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from creditledger_client import (
    LedgerClient,
    LedgerError,
    ReservationState,
    SyncLedgerClient,
)

from tests.conftest import RunningServer

ASSET = "crm_credits"


class SendFailed(Exception):
    """What a caller's job raises halfway through."""


async def funded_account(client: LedgerClient, amount: int) -> str:
    account = f"hold-{uuid.uuid4().hex[:10]}"
    await client.create_account(account)
    await client.grant(account, ASSET, amount)
    return account


@pytest.mark.timeout(60)
async def test_a_block_that_raises_pays_for_what_it_used(ledger_server: RunningServer) -> None:
    async with LedgerClient(ledger_server.target) as client:
        account = await funded_account(client, 3_000)
        key = f"automation-run-{uuid.uuid4().hex[:8]}"
        with pytest.raises(SendFailed):
            async with client.reservation(account, ASSET, 3_000, idempotency_key=key) as hold:
                for _ in range(28):
                    hold.use(100)  # 2,800 messages delivered
                raise SendFailed("the 2,801st send failed")
        assert hold.result is not None and not hold.result.replayed
        reservation = await client.get_reservation(hold.reservation_id)
        assert (reservation.settled, reservation.released) == (2_800, 200)
        assert reservation.state is ReservationState.CLOSED
        balance = (await client.get_balance(account, ASSET)).balance
        assert (balance.available, balance.reserved, balance.settled) == (200, 0, 2_800)

        # The job is rerun with the same reserve key: the reserve replays, the
        # reservation is already closed, so the helper says so and settles nothing.
        async with client.reservation(account, ASSET, 3_000, idempotency_key=key) as again:
            assert again.replayed and again.finished
            assert again.reservation_id == hold.reservation_id
            with pytest.raises(RuntimeError, match="already closed"):
                again.use(1)
        assert again.result is None and again.outcome is not None
        assert (again.outcome.settled, again.outcome.released) == (2_800, 200)
        after = (await client.get_balance(account, ASSET)).balance
        assert after == balance


@pytest.mark.timeout(60)
async def test_rerun_after_the_settle_was_lost_replays_it(ledger_server: RunningServer) -> None:
    async with LedgerClient(ledger_server.target) as client:
        account = await funded_account(client, 3_000)
        key = f"automation-run-{uuid.uuid4().hex[:8]}"
        # A first run reserved, then died before its settle reached the server.
        first = await client.reserve(account, ASSET, 3_000, idempotency_key=key)
        async with client.reservation(account, ASSET, 3_000, idempotency_key=key) as hold:
            assert hold.replayed and not hold.finished
            assert hold.reservation_id == first.reservation.reservation_id
            hold.use(1_000)
        assert hold.result is not None
        assert (hold.result.reservation.settled, hold.result.reservation.released) == (1_000, 2_000)
        # The settle's key derives from the reservation: sending it again is a replay,
        # never RESERVATION_CLOSED and never a second settle.
        replay = await client.settle(
            hold.reservation_id,
            1_000,
            final=True,
            idempotency_key=f"hold:{hold.reservation_id}:settle",
        )
        assert replay.replayed and replay.reservation.settled == 1_000


@pytest.mark.timeout(60)
async def test_release_when_asked_and_the_blocking_helper(ledger_server: RunningServer) -> None:
    async with LedgerClient(ledger_server.target) as client:
        account = await funded_account(client, 500)

    def job() -> tuple[int, int]:
        with SyncLedgerClient(ledger_server.target) as sync_client:
            try:
                with sync_client.reservation(account, ASSET, 500, on_error="release") as hold:
                    hold.use(300)
                    raise SendFailed("all or nothing, and it was nothing")
            except SendFailed:
                pass
            reservation = sync_client.get_reservation(hold.reservation_id)
            return reservation.settled, reservation.released

    assert await asyncio.to_thread(job) == (0, 500)


@pytest.mark.timeout(60)
async def test_errors_from_the_real_server_carry_a_request_id(
    ledger_server: RunningServer,
) -> None:
    async with LedgerClient(ledger_server.target) as client:
        with pytest.raises(LedgerError) as caught:
            await client.get_account(f"missing-{uuid.uuid4().hex[:8]}")
    assert caught.value.request_id
