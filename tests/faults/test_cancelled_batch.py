"""A batch cancelled while it begins its transaction must not swallow the batches after it.

Found by torture seed 109 (commit 3e607d5): after a SIGSTOP, server-A answered
OK to 45 commands in a row (reserves, charges, settles, a grant) that were
never committed; they vanished when its connection was terminated. The
writer's 2 s attempt timeout (asyncio.wait_for) cancelled a batch inside
asyncpg's `Transaction.start()`: BEGIN had reached PostgreSQL, but asyncpg
left `_top_xact` set, and `PostgresStore.batch()` kept the writer's connection
(it drops it on StorageUnavailable only). Every later batch then became a
SAVEPOINT inside that open transaction, and its "commit" a RELEASE SAVEPOINT:
answered OK, committed never.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools

import asyncpg
import pytest

from ledger.storage.pool import PoolSettings, create_pool
from ledger.storage.postgres import PostgresStore

pytestmark = pytest.mark.timeout(60)


async def test_batch_cancelled_in_begin_leaves_later_batches_committed(
    fresh_database_url: str,
) -> None:
    admin = await asyncpg.connect(fresh_database_url)
    await admin.execute("CREATE TABLE probe (v int)")
    pool = await create_pool(fresh_database_url, PoolSettings(min_size=1, max_size=2))
    store = PostgresStore(pool)
    try:
        async with store.batch():
            pass  # the writer now holds its connection: the next batch's first wait is BEGIN

        async def begin_and_hang() -> None:
            async with store.batch():
                await asyncio.sleep(3600)

        task = asyncio.create_task(begin_and_hang())
        await asyncio.sleep(0)  # the task is now inside BEGIN
        task.cancel()  # what asyncio.wait_for does when the attempt timeout fires
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

        for value in range(3):
            async with store.batch() as unit:
                await unit._conn.execute("INSERT INTO probe VALUES ($1)", value)
            seen = await admin.fetchval("SELECT count(*) FROM probe")
            assert seen == value + 1, (
                f"batch {value} returned as committed, but nobody else sees it"
            )
    finally:
        with contextlib.suppress(Exception):
            await store.close()
        await pool.close()
        await admin.close()


async def _probe_store(url: str) -> tuple[asyncpg.Connection, asyncpg.Pool, PostgresStore]:
    admin = await asyncpg.connect(url)
    await admin.execute("CREATE TABLE probe (v int)")
    pool = await create_pool(url, PoolSettings(min_size=1, max_size=2))
    return admin, pool, PostgresStore(pool)


async def test_chained_commit_commits_and_begins_the_next_batch(fresh_database_url: str) -> None:
    """With work waiting, COMMIT and the next BEGIN go as one round trip: every
    batch is still committed when its block exits, and the next transaction is
    already open (with no snapshot yet) for the batch after it."""
    admin, pool, store = await _probe_store(fresh_database_url)
    try:
        for value in range(3):
            async with store.batch(lambda: True) as unit:
                await unit._conn.execute("INSERT INTO probe VALUES ($1)", value)
                pid = unit._conn.get_server_pid()
            seen = await admin.fetchval("SELECT count(*) FROM probe")
            assert seen == value + 1, f"chained batch {value} returned, but nobody else sees it"
            state, xmin = await admin.fetchrow(
                "SELECT state, backend_xmin FROM pg_stat_activity WHERE pid = $1", pid
            )
            assert state == "idle in transaction", "the next batch's BEGIN was not sent along"
            assert xmin is None, "the early BEGIN must not hold a snapshot"
        async with store.batch(lambda: False) as unit:
            await unit._conn.execute("INSERT INTO probe VALUES (3)")
        assert await admin.fetchval("SELECT count(*) FROM probe") == 4
        state = await admin.fetchval("SELECT state FROM pg_stat_activity WHERE pid = $1", pid)
        assert state == "idle", "with nothing waiting, the writer must not sit in a transaction"
    finally:
        with contextlib.suppress(Exception):
            await store.close()
        await pool.close()
        await admin.close()


async def test_batch_cancelled_after_a_chained_begin_leaves_later_batches_committed(
    fresh_database_url: str,
) -> None:
    admin, pool, store = await _probe_store(fresh_database_url)
    try:
        async with store.batch(lambda: True):
            pass  # leaves the writer's connection inside an early-begun transaction

        async def write_and_hang() -> None:
            async with store.batch(lambda: True) as unit:
                await unit._conn.execute("INSERT INTO probe VALUES (-1)")
                await asyncio.sleep(3600)

        task = asyncio.create_task(write_and_hang())
        await asyncio.sleep(0.2)
        task.cancel()  # the attempt timeout, mid-batch
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

        for value in range(3):
            chained = value % 2 == 0  # chained, plain, chained
            async with store.batch(functools.partial(bool, chained)) as unit:
                await unit._conn.execute("INSERT INTO probe VALUES ($1)", value)
            rows = await admin.fetch("SELECT v FROM probe ORDER BY v")
            assert [r["v"] for r in rows] == list(range(value + 1)), (
                "the cancelled batch's row must never commit, and every later batch must"
            )
    finally:
        with contextlib.suppress(Exception):
            await store.close()
        await pool.close()
        await admin.close()
