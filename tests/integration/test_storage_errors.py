"""Database errors a caller's request can meet, against the real PostgreSQL (issue 13, item 5).

Every unit of work PostgresStore runs outside the writer (CreateAccount, the
reads, the sweeper's queries) must end in a value or in one of the service's
two storage exceptions, never in a raw driver error (which answers INTERNAL):
a lost serialization race or a lock timeout is re-run (bounded) and then
SerializationConflict; a cancelled statement is StorageUnavailable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from ledger.service.ports import SerializationConflict, StorageUnavailable
from ledger.storage import postgres
from ledger.storage.pool import create_pool
from ledger.storage.postgres import PostgresStore

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[PostgresStore]:
    pool = await create_pool(database_url)
    yield PostgresStore(pool)
    await pool.close()


def raise_sqlstate(state: str) -> str:
    return f"DO $$ BEGIN RAISE EXCEPTION 'forced' USING ERRCODE = '{state}'; END $$"


@pytest.mark.parametrize("state", ["40001", "40P01", "55P03"])
async def test_a_lost_race_is_run_again_then_succeeds(store: PostgresStore, state: str) -> None:
    attempts = 0

    async def unit(conn: asyncpg.Connection) -> int:
        nonlocal attempts
        attempts += 1
        async with conn.transaction(isolation="serializable"):
            if attempts < 3:
                await conn.execute(raise_sqlstate(state))
            value: int = await conn.fetchval("SELECT 42")
            return value

    assert await store._read(unit) == 42
    assert attempts == 3


async def test_a_race_lost_every_time_is_serialization_conflict(store: PostgresStore) -> None:
    attempts = 0

    async def unit(conn: asyncpg.Connection) -> None:
        nonlocal attempts
        attempts += 1
        await conn.execute(raise_sqlstate("40001"))

    with pytest.raises(SerializationConflict) as err:
        await store._read(unit)
    assert attempts == err.value.attempts == postgres._UNIT_ATTEMPTS_MAX


@pytest.mark.parametrize("state", ["57014", "53100", "53200", "58030"])
async def test_cancelled_or_out_of_resources_is_unavailable(
    store: PostgresStore, state: str
) -> None:
    with pytest.raises(StorageUnavailable):
        await store._read(lambda conn: conn.execute(raise_sqlstate(state)))


async def test_a_statement_timeout_is_unavailable(store: PostgresStore) -> None:
    async def unit(conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await conn.execute("SET LOCAL statement_timeout = 50")
            await conn.execute("SELECT pg_sleep(2)")

    with pytest.raises(StorageUnavailable):
        await store._read(unit)
