"""The writer's pipeline (`--writer-pipeline 2`): a second batch runs while the
first is still saving and committing, on a connection of its own, only when the
two share no row; against real PostgreSQL at SERIALIZABLE.

The first batch is held inside its save (after it read and applied, before its
writes reach PostgreSQL) by a gate around the real store's unit of work, so the
order of the two transactions is the test's, not the scheduler's.
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
from ledger.observability import metrics
from ledger.service.clock import SystemClock
from ledger.service.ports import IdempotencyRecord
from ledger.service.writer import Writer, WriterSettings
from ledger.storage.pool import PoolSettings, create_pool, migrate
from ledger.storage.postgres import PgBatch, PostgresStore
from tests.support.db import TestDatabase

pytestmark = pytest.mark.timeout(60)
ASSET = "crm"
FUNDS = 100
PIPELINED = WriterSettings(pipeline=2)


class GatedStore:
    """The real PostgresStore; the first batch with a Charge waits in save() until
    `release` is set (`held` is set when it got there). `fail_first_commit`
    terminates that batch's connection when it is released, as a database that
    dropped the connection under its COMMIT would."""

    def __init__(self, store: PostgresStore, url: str, fail_first_commit: bool = False) -> None:
        self._store = store
        self._url = url
        self.reachable = True
        self.concurrent_batches = store.concurrent_batches
        self.held = asyncio.Event()
        self.release = asyncio.Event()
        self._gated = False
        self._fail = fail_first_commit

    @asynccontextmanager
    async def batch(self, more_waiting: Callable[[], bool] | None = None) -> AsyncIterator[Any]:
        async with self._store.batch(more_waiting) as unit:
            yield _GatedUnit(unit, self)

    async def gate(self, unit: PgBatch, ws: WorkingSet) -> None:
        if self._gated or not any(p.movement.value == "settle" for p in ws.postings):
            return
        self._gated = True
        self.held.set()
        await self.release.wait()
        if self._fail:
            admin = await asyncpg.connect(self._url)
            try:
                pid = unit._conn.get_server_pid()
                await admin.execute("SELECT pg_terminate_backend($1)", pid)
            finally:
                await admin.close()
            await asyncio.sleep(0.2)  # asyncpg sees the connection end meanwhile


class _GatedUnit:
    def __init__(self, unit: PgBatch, store: GatedStore) -> None:
        self._unit = unit
        self._store = store

    async def load(self, ws: WorkingSet, *args: Any, **kwargs: Any) -> Any:
        return await self._unit.load(ws, *args, **kwargs)

    async def save(self, ws: WorkingSet, records: list[IdempotencyRecord]) -> None:
        await self._store.gate(self._unit, ws)
        await self._unit.save(ws, records)


@pytest.fixture
async def db() -> AsyncIterator[TestDatabase]:
    database = await TestDatabase.create("ledger_pipeline")
    await migrate(database.url)
    yield database
    await database.drop()


@asynccontextmanager
async def running(
    url: str, settings: WriterSettings = PIPELINED, fail_first_commit: bool = False
) -> AsyncIterator[tuple[Writer, GatedStore, list[str]]]:
    """A writer with a pipeline of 2 on the real store, and three funded accounts."""
    pool = await create_pool(url, PoolSettings(min_size=1, max_size=6))
    store = PostgresStore(pool)
    gated = GatedStore(store, url, fail_first_commit)
    writer = Writer(gated, SystemClock(), settings)  # type: ignore[arg-type]
    writer.start()
    now = SystemClock().now()
    accounts = [f"p-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    try:
        for account in accounts:
            await store.create_account(account, {}, now)
            await writer.submit(c.Grant("t", uuid.uuid4().hex, account, ASSET, FUNDS))
        yield writer, gated, accounts
    finally:
        await writer.stop()
        await store.close()
        await pool.close()


def charge(account: str, amount: int = 1) -> c.Charge:
    return c.Charge("t", uuid.uuid4().hex, account, ASSET, amount)


async def available(url: str, account: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval(
                "SELECT available FROM balances WHERE account_id = $1 AND asset = $2",
                account,
                ASSET,
            )
        )
    finally:
        await conn.close()


async def recorded(url: str, keys: list[str]) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM idempotency WHERE key = ANY($1)", keys)
        )
    finally:
        await conn.close()


def waits(when: str) -> float:
    return float(metrics.PIPELINE_WAITS.labels(when)._value.get())


async def test_a_batch_with_other_rows_commits_while_the_first_is_still_saving(
    db: TestDatabase,
) -> None:
    async with running(db.url) as (writer, gated, (a, b, _)):
        first = asyncio.create_task(writer.submit(charge(a)))
        await asyncio.wait_for(gated.held.wait(), 10)
        # The first batch is applied and holds its transaction open; a charge on
        # another account is read, applied, saved, committed and answered meanwhile.
        second_cmd = charge(b)
        result, replayed = await asyncio.wait_for(writer.submit(second_cmd), 10)
        assert isinstance(result, ReservationResult) and not replayed
        assert not first.done()
        assert await available(db.url, b) == FUNDS - 1
        assert await available(db.url, a) == FUNDS  # the first has not committed
        gated.release.set()
        await asyncio.wait_for(first, 10)
        assert await available(db.url, a) == FUNDS - 1


async def test_a_batch_on_the_same_account_waits_for_the_first(db: TestDatabase) -> None:
    async with running(db.url) as (writer, gated, (a, _, _)):
        before = waits("before")
        first = asyncio.create_task(writer.submit(charge(a)))
        await asyncio.wait_for(gated.held.wait(), 10)
        second = asyncio.create_task(writer.submit(charge(a, 2)))
        await asyncio.sleep(0.3)
        assert not second.done(), "a batch sharing a pair ran beside the first"
        assert waits("before") == before + 1
        gated.release.set()
        await asyncio.wait_for(asyncio.gather(first, second), 10)
        assert await available(db.url, a) == FUNDS - 3


async def test_a_settle_of_the_same_account_waits_once_its_read_shows_the_pair(
    db: TestDatabase,
) -> None:
    """A Settle names a reservation, not an account: only its read shows that it
    shares the first batch's pair; it then rolls back, waits and reads again."""
    async with running(db.url) as (writer, gated, (a, _, _)):
        held, _ = await writer.submit(c.Reserve("t", uuid.uuid4().hex, a, ASSET, 10))
        assert isinstance(held, ReservationResult)
        before = waits("after_load")
        first = asyncio.create_task(writer.submit(charge(a)))
        await asyncio.wait_for(gated.held.wait(), 10)
        settle = asyncio.create_task(
            writer.submit(c.Settle("t", uuid.uuid4().hex, held.reservation.reservation_id, 4))
        )
        await asyncio.sleep(0.3)
        assert not settle.done(), "a settle on the first batch's pair ran beside it"
        assert waits("after_load") == before + 1
        gated.release.set()
        await asyncio.wait_for(asyncio.gather(first, settle), 10)
        # 100 - 10 held - 1 charged; the settle took 4 of the hold, released nothing.
        assert await available(db.url, a) == FUNDS - 10 - 1


async def test_two_batches_that_meet_in_postgresql_lose_no_update(db: TestDatabase) -> None:
    """With the gate off, a second charge of the same account runs beside the
    first and commits first; the first's save then meets the changed balance row,
    SERIALIZABLE aborts it, and the writer runs it again from a fresh read: both
    charges count once. (With `pipeline_gate` on, the second waits instead.)"""
    settings = WriterSettings(pipeline=2, pipeline_gate=False)
    async with running(db.url, settings) as (writer, gated, (a, _, _)):
        retries = metrics.SERIALIZATION_RETRIES._value.get()
        first_cmd = charge(a)
        first = asyncio.create_task(writer.submit(first_cmd))
        await asyncio.wait_for(gated.held.wait(), 10)
        second_cmd = charge(a, 2)
        await asyncio.wait_for(writer.submit(second_cmd), 10)
        assert await available(db.url, a) == FUNDS - 2
        gated.release.set()
        result, _ = await asyncio.wait_for(first, 10)
        assert isinstance(result, ReservationResult)
        assert metrics.SERIALIZATION_RETRIES._value.get() >= retries + 1
        assert await available(db.url, a) == FUNDS - 3
        assert await recorded(db.url, [first_cmd.idempotency_key, second_cmd.idempotency_key]) == 2


async def test_a_lost_commit_of_the_first_batch_answers_the_second_by_its_own_commit(
    db: TestDatabase,
) -> None:
    """The first batch's connection dies under it after the second batch (other
    rows) committed: the second is answered (it committed on its own connection),
    the first is run again on a new connection and answered once it committed;
    every acknowledged charge is recorded exactly once."""
    async with running(db.url, fail_first_commit=True) as (writer, gated, (a, b, _)):
        first_cmd = charge(a)
        first = asyncio.create_task(writer.submit(first_cmd))
        await asyncio.wait_for(gated.held.wait(), 10)
        second_cmd = charge(b)
        await asyncio.wait_for(writer.submit(second_cmd), 10)
        assert await recorded(db.url, [second_cmd.idempotency_key]) == 1
        gated.release.set()
        # The writer runs it again on a new connection (a lost connection is
        # retried: its batch either committed, and the retry replays, or not).
        result, _ = await asyncio.wait_for(first, 15)
        assert isinstance(result, ReservationResult)
        assert await recorded(db.url, [first_cmd.idempotency_key]) == 1
        assert await available(db.url, a) == FUNDS - 1
        assert await available(db.url, b) == FUNDS - 1


async def test_a_connection_lost_between_read_and_save_runs_the_batch_again(
    db: TestDatabase,
) -> None:
    """Without the pipeline too: the server ends the writer's connection while its
    batch is applied in Python. asyncpg hands a dead connection back to the pool,
    and the save's call on it raised InterfaceError before anything was awaited:
    the caller got INTERNAL. It is a lost connection: run again, answered once."""
    async with running(db.url, WriterSettings(), fail_first_commit=True) as (
        writer,
        gated,
        (a, _, _),
    ):
        cmd = charge(a)
        first = asyncio.create_task(writer.submit(cmd))
        await asyncio.wait_for(gated.held.wait(), 10)
        gated.release.set()
        result, _ = await asyncio.wait_for(first, 15)
        assert isinstance(result, ReservationResult)
        assert await recorded(db.url, [cmd.idempotency_key]) == 1
        assert await available(db.url, a) == FUNDS - 1
