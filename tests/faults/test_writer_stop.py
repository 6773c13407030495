"""Stopping the writer must stop it, whatever it was doing at that instant.

Found by the torture with fronts (`test_torture_smoke_with_fronts`, seed
20261219, a clean-clone `make test` on 2026-12-05): after the writer's front
was paused past its lease, one front answered "no writer is elected right
now" for 75 s, to the end of the run. A process that steps down stops its
Writer (cancels its task and waits for it) before it follows the new writer.
On Python 3.11, `asyncio.wait_for` returns the inner result and drops the
cancellation when the inner work finishes in the same loop turn as the
cancel arrives (fixed in 3.12, where wait_for is `asyncio.timeout`). The
writer's batch attempt ran under wait_for, so a stop that arrived just as a
batch committed was lost: the Writer went on waiting for commands, and the
step-down waited for it for ever, with the process neither writer nor
follower.

Here the stop arrives exactly then: the real store commits, and the stop
is started in the same turn, before the attempt's answer reaches the loop.

With that fixed, the same torture seed still showed a writer that did not
stop when cancelled (`stop_task` cancelled it again two seconds later): a
batch that failed rolls back before it gives up its connection, and that
ROLLBACK swallowed any exception, the stop's cancellation too; the writer
then retried the batch as if nothing had asked it to stop.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from ledger.domain import commands as c
from ledger.domain.model import ReservationResult
from ledger.service.clock import SystemClock
from ledger.service.ports import SerializationConflict
from ledger.service.writer import Writer, WriterSettings
from ledger.storage.pool import PoolSettings, create_pool, migrate
from ledger.storage.postgres import PostgresStore
from tests.faults.proxy import TcpProxy

pytestmark = pytest.mark.timeout(60)
ASSET = "crm"


class CommitHookStore:
    """The real store; `after_commit`, when set, runs once, right after the next
    transaction committed, in the same loop turn (nothing awaited in between)."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self.after_commit: Callable[[], None] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    @asynccontextmanager
    async def batch(self, more_waiting: Any = None) -> AsyncIterator[Any]:
        async with self._store.batch(more_waiting) as unit:
            yield unit
        hook, self.after_commit = self.after_commit, None
        if hook is not None:
            hook()


async def test_a_stop_that_arrives_as_a_batch_commits_stops_the_writer(
    fresh_database_url: str,
) -> None:
    await migrate(fresh_database_url)
    pool = await create_pool(fresh_database_url, PoolSettings(min_size=1, max_size=4))
    store = PostgresStore(pool)
    hooked = CommitHookStore(store)
    writer = Writer(hooked, SystemClock(), WriterSettings())
    writer.start()
    stopping: list[asyncio.Task[None]] = []
    try:
        caller = f"t-{uuid.uuid4().hex[:8]}"
        account = f"{caller}-acct"
        await store.create_account(account, {}, SystemClock().now())
        await writer.submit(c.Grant(caller, "grant", account, ASSET, 100))

        hooked.after_commit = lambda: stopping.append(asyncio.create_task(writer.stop()))
        charged, _ = await writer.submit(c.Charge(caller, "charge", account, ASSET, 1))
        assert isinstance(charged, ReservationResult), "the committed batch is answered"
        assert stopping, "the hook did not run"
        done, _ = await asyncio.wait(stopping, timeout=5)
        assert done, "Writer.stop() did not return: the cancel arrived as the batch committed"
        stopping[0].result()
    finally:
        for task in stopping:
            task.cancel()
        await store.close()
        await pool.close()


async def test_a_stop_that_arrives_during_a_failed_batchs_rollback_stops_it(
    fresh_database_url: str,
) -> None:
    proxy = TcpProxy.for_database(fresh_database_url)
    proxy.start()
    pool = await create_pool(
        proxy.url_for(fresh_database_url), PoolSettings(min_size=1, max_size=2)
    )
    store = PostgresStore(pool)
    try:

        async def fails_then_rolls_back() -> None:
            async with store.batch() as unit:
                await unit._conn.execute("SELECT 1")
                proxy.pause()  # the ROLLBACK that follows gets no answer
                raise SerializationConflict("injected: a batch that lost its race")

        task = asyncio.create_task(fails_then_rolls_back())
        await asyncio.sleep(0.3)  # the batch failed; its ROLLBACK is in flight
        assert not task.done(), "the ROLLBACK was answered: the proxy did not hold it"
        task.cancel()  # the writer is being stopped
        done, _ = await asyncio.wait([task], timeout=5)
        assert done, "the cancelled batch did not end"
        assert task.cancelled(), (
            f"the stop was swallowed: the batch ended with {task.exception()!r}, which the"
            " writer retries as if nobody had asked it to stop"
        )
    finally:
        proxy.resume()
        await store.close()
        await pool.close()
        proxy.close()
