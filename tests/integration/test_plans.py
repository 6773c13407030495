"""The writer's plans: made once, and never a full scan, whatever the statistics.

The writer's connection uses generic plans (planned once per connection, not at
every batch). That is only safe if the plan PostgreSQL makes on a fresh,
never-analyzed database (autovacuum may be off, as on the machine these figures
come from) stays an index plan once the tables hold many rows: a cached
sequential scan of `lots` or `balances` cost 32 ms per batch here once.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from ledger.storage import postgres
from ledger.storage.pool import PoolSettings, create_pool, migrate
from ledger.storage.postgres import PostgresStore
from tests.support.db import TestDatabase

pytestmark = pytest.mark.timeout(60)

LEDGER_TABLES = ("accounts", "balances", "lots", "reservations", "entries", "idempotency")


@pytest.fixture
async def empty_db() -> AsyncIterator[TestDatabase]:
    db = await TestDatabase.create("ledger_plans")
    await migrate(db.url)
    yield db
    await db.drop()


async def _generic_plan(conn: asyncpg.Connection, name: str, sql: str, params: str) -> str:
    n_params = params.count(",") + 1
    await conn.execute(f"PREPARE {name}({params}) AS {sql}")
    rows = await conn.fetch(f"EXPLAIN EXECUTE {name}({', '.join(['NULL'] * n_params)})")
    return "\n".join(r[0] for r in rows)


def _full_scans(plan: str) -> list[str]:
    return [
        line.strip()
        for line in plan.splitlines()
        if "Seq Scan" in line and any(f" on {t}" in line for t in LEDGER_TABLES)
    ]


async def _fill(url: str, rows: int) -> None:
    """Many rows, no ANALYZE: the statistics still say what the empty tables said."""
    conn = await asyncpg.connect(url)
    try:
        now = datetime.now(UTC)
        await conn.executemany(
            "INSERT INTO accounts (account_id, created_at) VALUES ($1, $2)",
            [(f"a{i}", now) for i in range(rows)],
        )
        await conn.executemany(
            "INSERT INTO balances VALUES ($1, 'crm', 5, 0, 5, 0, 0, 0)",
            [(f"a{i}",) for i in range(rows)],
        )
        await conn.executemany(
            "INSERT INTO lots VALUES ($1, $2, 'crm', 5, 5, 0, 'seed', NULL, $3)",
            [(uuid.uuid4(), f"a{i}", now) for i in range(rows)],
        )
    finally:
        await conn.close()


async def test_writer_plans_are_index_plans_made_once(empty_db: TestDatabase) -> None:
    pool = await create_pool(empty_db.url, PoolSettings(min_size=1, max_size=2))
    store = PostgresStore(pool)
    try:
        async with store.batch() as unit:
            conn = unit._conn
            assert await conn.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
        await _fill(empty_db.url, 5000)
        async with store.batch() as unit:
            load = await _generic_plan(
                unit._conn,
                "load",
                postgres._LOAD,
                "text[], text[], uuid[], text[], text[], text[], timestamptz, text[], text[], int4, uuid[],"
                " uuid[]",
            )
            save = await _generic_plan(unit._conn, "save", postgres._SAVE, "jsonb, timestamptz")
            await unit._conn.execute("DEALLOCATE ALL")
        assert "Index" in load, load
        assert _full_scans(load) == [], load
        assert _full_scans(save) == [], save
    finally:
        await store.close()
        await pool.close()


async def test_other_connections_keep_custom_plans(empty_db: TestDatabase) -> None:
    """The settings belong to the writer's connection: back in the pool, they are reset."""
    pool = await create_pool(empty_db.url, PoolSettings(min_size=1, max_size=1))
    store = PostgresStore(pool)
    try:
        async with store.batch():
            pass
        await store.close()  # the writer's connection goes back to the pool
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
            assert await conn.fetchval("SHOW enable_seqscan") == "on"
    finally:
        await pool.close()
