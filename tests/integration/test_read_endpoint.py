"""The read endpoint on one PostgreSQL: refused at start without remote_apply, and fenced.

The positive case (reads on a synchronous standby see a write acknowledged on
another replica) needs standbys: tests/failover runs it on the Patroni cluster.
Here: the start-up check says why reads stay on the primary, and the per-read
fence never lets a node that is not in recovery answer (it may be an old
primary cut off from the cluster), so reads fall back to the primary.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from ledger.storage.pool import PoolSettings, create_pool, migrate, read_endpoint_problem
from ledger.storage.postgres import PostgresStore
from tests.support.db import TestDatabase

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def scratch_db() -> AsyncIterator[TestDatabase]:
    db = await TestDatabase.create("ledger_read_endpoint")
    yield db
    await db.drop()


async def test_read_endpoint_needs_remote_apply_and_synchronous_standbys(
    scratch_db: TestDatabase,
) -> None:
    assert "not 'remote_apply'" in await read_endpoint_problem(scratch_db.url)
    # By name, not from the URL: the embedded server's URL ends in ?host=/socket/dir.
    database = scratch_db.name
    conn = await asyncpg.connect(scratch_db.url)
    try:
        await conn.execute(f'ALTER DATABASE "{database}" SET synchronous_commit = remote_apply')
    finally:
        await conn.close()
    # remote_apply alone waits for nobody when no standby is synchronous.
    assert "synchronous_standby_names is empty" in await read_endpoint_problem(scratch_db.url)


async def test_reads_never_served_by_a_node_out_of_recovery(scratch_db: TestDatabase) -> None:
    await migrate(scratch_db.url)
    pool = await create_pool(scratch_db.url, PoolSettings(min_size=1, max_size=2))
    read_pool = await create_pool(scratch_db.url, PoolSettings(min_size=1, max_size=2))
    store = PostgresStore(pool, read_pool=read_pool)
    try:
        fence = await pool.fetchval("SELECT pg_current_wal_flush_lsn()::text")
        async with read_pool.acquire() as conn:
            assert await store._caught_up(conn, fence) is False
        now = datetime.now(UTC)
        await store.create_account("read-endpoint-probe", {"a": "b"}, now)
        account = await store.get_account("read-endpoint-probe")
        assert account is not None and account.metadata == {"a": "b"}
    finally:
        await store.close()
        await pool.close()
        await read_pool.close()
