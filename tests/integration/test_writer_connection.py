"""The writer's connection ended by the server while a batch is applied in Python
(between its read and its save), against real PostgreSQL.

asyncpg hands a connection the server ended back to the pool, and the next call
on it raises InterfaceError at once, before there is anything to await: the
save's call escaped the storage's error translation and the caller got
INTERNAL. It is a lost connection: the batch runs again on a new one and is
answered once, recorded once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from ledger.domain import commands as c
from ledger.domain.model import ReservationResult
from ledger.domain.rules import WorkingSet
from ledger.service.clock import SystemClock
from ledger.service.writer import Writer
from ledger.storage.pool import PoolSettings, create_pool, migrate
from ledger.storage.postgres import PgBatch, PostgresStore
from tests.support.db import TestDatabase
from tests.support.units import WrappedUnit

pytestmark = pytest.mark.timeout(60)
ASSET = "crm"
FUNDS = 100


class CuttingStore:
    """The real PostgresStore; the first batch that charges has its connection
    ended by the server (pg_terminate_backend) just before its save, and asyncpg
    is given the time to notice."""

    def __init__(self, store: PostgresStore, url: str) -> None:
        self._store = store
        self._url = url
        self.reachable = True
        self.cut = False

    @asynccontextmanager
    async def batch(self, more_waiting: Callable[[], bool] | None = None) -> AsyncIterator[Any]:
        async with self._store.batch(more_waiting) as unit:
            yield _CuttingUnit(unit, self)

    async def before_save(self, unit: PgBatch, ws: WorkingSet) -> None:
        if self.cut or not any(p.movement.value == "settle" for p in ws.postings):
            return
        self.cut = True
        admin = await asyncpg.connect(self._url)
        try:
            await admin.execute("SELECT pg_terminate_backend($1)", unit._conn.get_server_pid())
        finally:
            await admin.close()
        await asyncio.sleep(0.2)  # asyncpg sees the connection end meanwhile


class _CuttingUnit(WrappedUnit):
    def __init__(self, unit: PgBatch, store: CuttingStore) -> None:
        super().__init__(unit)
        self._store = store

    async def before_write(self, ws: WorkingSet) -> None:
        await self._store.before_save(self._unit, ws)


@pytest.fixture
async def db() -> AsyncIterator[TestDatabase]:
    database = await TestDatabase.create("ledger_writer_conn")
    await migrate(database.url)
    yield database
    await database.drop()


async def test_a_connection_lost_between_read_and_save_runs_the_batch_again(
    db: TestDatabase,
) -> None:
    pool = await create_pool(db.url, PoolSettings(min_size=1, max_size=4))
    store = PostgresStore(pool)
    cutting = CuttingStore(store, db.url)
    writer = Writer(cutting, SystemClock())  # type: ignore[arg-type]
    writer.start()
    account = f"w-{uuid.uuid4().hex[:8]}"
    try:
        await store.create_account(account, {}, SystemClock().now())
        await writer.submit(c.Grant("t", uuid.uuid4().hex, account, ASSET, FUNDS))
        cmd = c.Charge("t", uuid.uuid4().hex, account, ASSET, 1)
        result, replayed = await asyncio.wait_for(writer.submit(cmd), 15)
        assert cutting.cut, "the connection was never cut: the test proved nothing"
        assert isinstance(result, ReservationResult) and not replayed
        admin = await asyncpg.connect(db.url)
        try:
            recorded = await admin.fetchval(
                "SELECT count(*) FROM idempotency WHERE key = $1", cmd.idempotency_key
            )
            available = await admin.fetchval(
                "SELECT available FROM balances WHERE account_id = $1", account
            )
        finally:
            await admin.close()
        assert recorded == 1
        assert available == FUNDS - 1
    finally:
        await writer.stop()
        await store.close()
        await pool.close()
