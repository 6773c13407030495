"""The Python clients against the real server: the change stream (reconnecting
after UNAVAILABLE), as-of balances, statements and balance alerts."""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
from creditledger_client import (
    AlertState,
    BalanceEventKind,
    InvalidArgument,
    LedgerClient,
    Movement,
    RetryPolicy,
    StreamedTransaction,
    SyncLedgerClient,
)

from ledger.app import App
from ledger.config import Config
from ledger.service.stream import WatchSettings
from tests.client.proxy import CuttableProxy
from tests.conftest import RunningServer

ASSET = "email_sends"
FAST = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.1)


async def tenant_account(client: LedgerClient, grant: int) -> tuple[str, str]:
    tenant = f"w{uuid.uuid4().hex[:8]}-"
    account = f"{tenant}a"
    await client.create_account(account)
    await client.grant(account, ASSET, grant)
    return tenant, account


async def take(client: LedgerClient, n: int, **filters: Any) -> list[StreamedTransaction]:
    got: list[StreamedTransaction] = []
    async for tx in client.watch_transactions(**filters):
        got.append(tx)
        if len(got) == n:
            break
    return got


@pytest.mark.timeout(60)
async def test_the_stream_reconnects_after_unavailable_from_the_last_position(
    ledger_server: RunningServer,
) -> None:
    proxy = CuttableProxy(ledger_server.app.port)
    await proxy.start()
    try:
        async with (
            LedgerClient(ledger_server.target) as direct,
            LedgerClient(proxy.target, retry=FAST) as through_proxy,
        ):
            tenant, account = await tenant_account(direct, 100)
            seen: list[StreamedTransaction] = []
            progress = asyncio.Event()

            async def consume() -> None:
                async for tx in through_proxy.watch_transactions(account_prefix=tenant):
                    seen.append(tx)
                    progress.set()
                    if len(seen) == 9:
                        return

            consumer = asyncio.create_task(consume())
            for cut_after in (3, 6):
                while len(seen) < cut_after:
                    await direct.charge(account, ASSET, 1)
                    await asyncio.wait_for(progress.wait(), 10)
                    progress.clear()
                proxy.cut()  # UNAVAILABLE on the stream: it must resume, not end or repeat
            while not consumer.done():
                await direct.charge(account, ASSET, 1)
                await asyncio.wait_for(progress.wait(), 10)
                progress.clear()
            await consumer
            expected = await take(direct, 9, account_prefix=tenant)
    finally:
        await proxy.close()
    assert proxy.cuts >= 2 and proxy.connections >= 3  # it did reconnect
    assert [t.position for t in seen] == [t.position for t in expected]
    assert [t.transaction_id for t in seen] == [t.transaction_id for t in expected]
    assert seen[0].movement is Movement.GRANT
    assert [t.balances[0].available for t in seen[1:]] == list(range(99, 91, -1))


@pytest.mark.timeout(60)
async def test_the_blocking_stream_reconnects_too(ledger_server: RunningServer) -> None:
    proxy = CuttableProxy(ledger_server.app.port)
    await proxy.start()
    loop = asyncio.get_running_loop()
    try:
        async with LedgerClient(ledger_server.target) as direct:
            tenant, account = await tenant_account(direct, 50)
            for _ in range(2):
                await direct.charge(account, ASSET, 1)
            halfway = asyncio.Event()
            resume = threading.Event()

            def consume() -> list[StreamedTransaction]:
                got: list[StreamedTransaction] = []
                with SyncLedgerClient(proxy.target, retry=FAST) as client:
                    for tx in client.watch_transactions(account_prefix=tenant):
                        got.append(tx)
                        if len(got) == 3:
                            loop.call_soon_threadsafe(halfway.set)
                            assert resume.wait(10)
                        if len(got) == 5:
                            return got
                return got

            consumer = asyncio.create_task(asyncio.to_thread(consume))
            await asyncio.wait_for(halfway.wait(), 10)
            proxy.cut()
            await direct.charge(account, ASSET, 2)
            await direct.charge(account, ASSET, 3)
            resume.set()
            seen = await asyncio.wait_for(consumer, 20)
            expected = await take(direct, 5, account_prefix=tenant)
    finally:
        await proxy.close()
    assert proxy.connections >= 2
    assert [t.position for t in seen] == [t.position for t in expected]
    assert [t.balances[0].available for t in seen] == [50, 49, 48, 46, 43]


@pytest.mark.timeout(60)
async def test_checkpoints_reach_the_caller_and_a_reconnect_goes_on_after_them(
    ledger_server: RunningServer, database_url: str
) -> None:
    # A replica of its own whose streams send checkpoints every 0.2 s (5 s by default).
    replica = App(
        Config(
            listen="127.0.0.1:0",
            database_url=database_url,
            metrics_listen="127.0.0.1:0",
            sweep_interval_s=60.0,
            drain_s=1.0,
        )
    )
    await replica.start()
    replica.ledger.stream._settings = WatchSettings(checkpoint_s=0.2)
    proxy = CuttableProxy(replica.port)
    await proxy.start()
    try:
        async with (
            LedgerClient(ledger_server.target) as direct,
            LedgerClient(proxy.target, retry=FAST) as through_proxy,
        ):
            _, quiet = await tenant_account(direct, 5)
            _, busy = await tenant_account(direct, 100)
            checkpoints: list[str] = []
            seen: list[StreamedTransaction] = []

            async def consume() -> None:
                async for tx in through_proxy.watch_transactions(
                    account_id=quiet, on_checkpoint=checkpoints.append
                ):
                    seen.append(tx)
                    if len(seen) == 2:
                        return

            consumer = asyncio.create_task(consume())
            async with asyncio.timeout(10):
                while len(checkpoints) < 2:  # others' transactions move the cursor on
                    await direct.charge(busy, ASSET, 1)
                    await asyncio.sleep(0.1)
            proxy.cut()
            await asyncio.sleep(0.3)
            await direct.grant(quiet, ASSET, 7)
            await asyncio.wait_for(consumer, 10)
    finally:
        await proxy.close()
        await replica.stop()
    assert proxy.connections >= 2
    assert checkpoints == sorted(set(checkpoints))
    assert seen[0].position < checkpoints[0] < seen[1].position
    assert [t.balances[0].available for t in seen] == [5, 12]


@pytest.mark.timeout(60)
async def test_resuming_after_a_position_and_from_now(ledger_server: RunningServer) -> None:
    async with LedgerClient(ledger_server.target) as client:
        tenant, account = await tenant_account(client, 10)
        await client.charge(account, ASSET, 1)
        first = await take(client, 2, account_prefix=tenant)
        rest = asyncio.create_task(
            take(client, 1, account_prefix=tenant, after_position=first[0].position)
        )
        assert (await rest)[0].position == first[1].position
        waiting = asyncio.create_task(take(client, 1, account_id=account, from_now=True))
        await asyncio.sleep(0.3)
        await client.charge(account, ASSET, 2)
        (now,) = await asyncio.wait_for(waiting, 10)
        assert now.balances[0].available == 7 and now.position > first[1].position
        with pytest.raises(InvalidArgument) as bad:
            await take(client, 1, after_position="not-a-position")
        assert bad.value.field_violations[0].field == "after_position"


@pytest.mark.timeout(60)
async def test_as_of_balances_statements_and_alerts(ledger_server: RunningServer) -> None:
    async with LedgerClient(ledger_server.target) as client:
        start = ledger_server.clock.now()
        tenant, account = await tenant_account(client, 100)
        alert = await client.set_balance_alert(account, ASSET, 50, recovery=80)
        assert (alert.state, alert.threshold_amount, alert.recovery_amount) == (
            AlertState.ABOVE,
            50,
            80,
        )
        assert [a.asset for a in await client.list_balance_alerts(account)] == [ASSET]
        await client.charge(account, ASSET, 30)
        await client.charge(account, ASSET, 30)  # 40: below 50
        txs = await take(client, 3, account_prefix=tenant)
        assert [e.kind for e in txs[2].events] == [BalanceEventKind.BALANCE_BELOW]
        assert txs[2].events[0].available == 40

        # As of a position and as of an instant: right after that transaction.
        at_grant = await client.get_balance(account, ASSET, as_of_position=txs[0].position)
        assert at_grant.balance.available == 100
        assert txs[1].commit_time is not None
        at_first = await client.get_balance(account, ASSET, as_of_time=txs[1].commit_time)
        assert at_first.balance.available == 70
        with pytest.raises(InvalidArgument):
            await client.get_balance(
                account, ASSET, as_of_position=txs[0].position, include_lots=True
            )
        with pytest.raises(ValueError, match="as_of_time must be timezone-aware"):
            await client.get_balance(account, ASSET, as_of_time=start.replace(tzinfo=None))

        end = ledger_server.clock.now()
        statement = await client.get_statement(account, ASSET, start - timedelta(seconds=1), end)
        assert (statement.opening.available, statement.closing.available) == (0, 40)
        by_movement = {m.movement: m for m in statement.movements}
        assert by_movement[Movement.GRANT].available_change == 100
        assert sum(m.available_change for m in statement.movements) == 40
        first_page = await client.get_statement(
            account, ASSET, start - timedelta(seconds=1), end, page_size=1
        )
        assert len(first_page.entries) == 1 and first_page.next_page_token
        second = await client.get_statement(
            account,
            ASSET,
            start - timedelta(seconds=1),
            end,
            page_size=1,
            page_token=first_page.next_page_token,
        )
        assert second.entries[0].entry_id != first_page.entries[0].entry_id

        assert await client.delete_balance_alert(account, ASSET) is True
        assert await client.delete_balance_alert(account, ASSET) is False
        assert await client.list_balance_alerts(account) == ()
