"""Idempotency retention by partitions (migration 0002, ledger/storage/idempotency.py).

What must hold: an expired key is never replayed (even before its partition is
dropped), a key inside retention is never lost, and (caller, key) stays unique
although each partition's primary key only covers that partition: two
transactions inserting one key into two partitions, across a boundary, must
not both commit.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ledger.domain.rules import WorkingSet
from ledger.service.ports import IdempotencyRecord, SerializationConflict
from ledger.storage import idempotency as idem
from ledger.storage import postgres
from ledger.storage.pool import PoolSettings, create_pool, migrate
from ledger.storage.postgres import PostgresStore
from tests.support.db import TestDatabase

pytestmark = pytest.mark.timeout(90)

WIDTH = timedelta(minutes=1)
MIGRATIONS = Path(__file__).parents[2] / "ledger" / "storage" / "migrations"


@pytest.fixture
async def db() -> AsyncIterator[TestDatabase]:
    database = await TestDatabase.create("ledger_retention")
    await migrate(database.url)
    yield database
    await database.drop()


_STORES: list[PostgresStore] = []


@pytest.fixture
async def pool(db: TestDatabase) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(db.url, PoolSettings(min_size=1, max_size=6))
    yield p
    while _STORES:
        await _STORES.pop().close()  # the writers' connections back before the pool closes
    await p.close()


def _store(pool: asyncpg.Pool) -> PostgresStore:
    store = PostgresStore(pool, idempotency_partition=WIDTH)
    _STORES.append(store)
    return store


def _ws(now: datetime) -> WorkingSet:
    return WorkingSet(now=now, refund_grace=timedelta(days=7))


def _record(key: str, expires_at: datetime, caller: str = "c") -> IdempotencyRecord:
    return IdempotencyRecord(caller, key, "Grant", b"\x01", {"none": {}}, expires_at)


async def _load(store: PostgresStore, now: datetime, key: str) -> bool:
    async with store.batch() as unit:
        found = await unit.load(_ws(now), [("c", key)], set(), set(), set(), set())
    return ("c", key) in found


async def _write(store: PostgresStore, now: datetime, record: IdempotencyRecord) -> None:
    async with store.batch() as unit:
        ws = _ws(now)
        await unit.load(ws, [(record.caller, record.key)], set(), set(), set(), set())
        await unit.save(ws, [record])


async def _rows(pool: asyncpg.Pool, key: str) -> int:
    async with pool.acquire() as conn:
        n: int = await conn.fetchval("SELECT count(*) FROM idempotency WHERE key = $1", key)
    return n


def _boundary(now: datetime) -> datetime:
    """A partition boundary a few widths ahead."""
    w = WIDTH.total_seconds()
    return datetime.fromtimestamp((int(now.timestamp() // w) + 3) * w, UTC)


async def test_an_expired_key_reads_absent_before_and_after_its_partition_is_dropped(
    pool: asyncpg.Pool,
) -> None:
    store = _store(pool)
    # Written 10 minutes ago with 5 minutes of retention: expired by every clock now
    # (partitions are dropped by the earlier of the process's and the database's).
    t0 = datetime.now(UTC) - timedelta(minutes=10)
    await _write(store, t0, _record("k1", t0 + timedelta(minutes=5)))
    assert await _load(store, t0 + timedelta(minutes=4, seconds=59), "k1")  # inside retention
    assert not await _load(store, t0 + timedelta(minutes=5), "k1")  # expired: absent
    assert await _rows(pool, "k1") == 1  # ...though its partition is still there
    await store.maintain_idempotency(t0 + timedelta(minutes=4), t0 + timedelta(minutes=10))
    assert await _rows(pool, "k1") == 1, "a partition holding a live key was dropped"
    now = datetime.now(UTC)
    _, dropped = await store.maintain_idempotency(now, now + timedelta(minutes=5))
    assert dropped >= 1
    assert await _rows(pool, "k1") == 0
    async with pool.acquire() as conn:
        parts = await idem.partitions(conn)
    assert all(p.upper > now for p in parts)
    assert not any(p.pending for p in parts)


async def test_a_clock_running_ahead_drops_nothing_the_database_clock_keeps(
    pool: asyncpg.Pool,
) -> None:
    store = _store(pool)
    now = datetime.now(UTC)
    await _write(store, now, _record("ahead", now + timedelta(minutes=5)))
    await store.maintain_idempotency(now + timedelta(days=30), now + timedelta(days=31))
    assert await _rows(pool, "ahead") == 1
    assert await _load(store, now, "ahead")


async def test_maintenance_creates_partitions_ahead_on_the_grid(pool: asyncpg.Pool) -> None:
    store = _store(pool)
    now = datetime.now(UTC)
    created, _ = await store.maintain_idempotency(now, now + timedelta(minutes=10))
    assert 10 <= created <= 11
    again, _ = await store.maintain_idempotency(now, now + timedelta(minutes=10))
    assert again == 0  # idempotent
    async with pool.acquire() as conn:
        parts = await idem.partitions(conn)
    for a, b in itertools.pairwise(parts):
        assert a.upper == b.lower  # contiguous
        assert b.upper - b.lower == WIDTH


async def _race(
    pool: asyncpg.Pool, key: str, a_expires: datetime, b_expires: datetime, b_reads: bool = True
) -> list[str]:
    """Two writers (two connections) insert `key`; each reads it first (as the
    writer does) and finds it absent, then both write, then both commit."""
    a, b = _store(pool), _store(pool)
    now = datetime.now(UTC)
    await a.maintain_idempotency(now, max(a_expires, b_expires) + 3 * WIDTH)
    outcomes: list[str] = []
    ctx_a: Any = a.batch()
    ctx_b: Any = b.batch()
    unit_a = await ctx_a.__aenter__()
    unit_b = await ctx_b.__aenter__()
    ws_a, ws_b = _ws(now), _ws(now)
    assert await unit_a.load(ws_a, [("c", key)], set(), set(), set(), set()) == {}
    if b_reads:
        assert await unit_b.load(ws_b, [("c", key)], set(), set(), set(), set()) == {}

    async def finish(name: str, ctx: Any, unit: Any, ws: WorkingSet, exp: datetime) -> str:
        try:
            await unit.save(ws, [_record(key, exp)])
        except SerializationConflict as exc:
            await ctx.__aexit__(type(exc), exc, exc.__traceback__)
            return f"{name}:conflict"
        try:
            await ctx.__aexit__(None, None, None)
        except SerializationConflict:
            return f"{name}:conflict"
        return f"{name}:committed"

    # b's insert may wait for a's transaction (same partition: the unique index
    # waits for a to end), so b runs as a task while a commits.
    a_saved = await unit_a.save(ws_a, [_record(key, a_expires)])
    b_task = asyncio.create_task(finish("b", ctx_b, unit_b, ws_b, b_expires))
    await asyncio.sleep(0.2)
    try:
        await ctx_a.__aexit__(None, None, None)
        outcomes.append("a:committed")
    except SerializationConflict:
        outcomes.append("a:conflict")
    outcomes.append(await b_task)
    del a_saved
    await a.close()
    await b.close()
    return outcomes


async def test_concurrent_duplicates_across_a_partition_boundary_never_both_commit(
    pool: asyncpg.Pool,
) -> None:
    boundary = _boundary(datetime.now(UTC))
    before, after = boundary - timedelta(seconds=1), boundary + timedelta(seconds=1)
    for i, (x, y) in enumerate(((before, after), (after, before), (before, before))):
        outcomes = await _race(pool, f"dup{i}", x, y)
        assert sorted(o.split(":")[1] for o in outcomes) == ["committed", "conflict"], outcomes
        assert await _rows(pool, f"dup{i}") == 1


async def test_without_the_read_the_partitions_alone_would_keep_both(pool: asyncpg.Pool) -> None:
    """The control: it is the read, not an index, that keeps the key unique across
    partitions (so the test above would fail if the writer stopped reading first)."""
    boundary = _boundary(datetime.now(UTC))
    outcomes = await _race(
        pool,
        "dup-noread",
        boundary - timedelta(seconds=1),
        boundary + timedelta(seconds=1),
        b_reads=False,
    )
    assert outcomes == ["a:committed", "b:committed"]
    assert await _rows(pool, "dup-noread") == 2


async def test_a_batch_creates_its_partition_when_the_sweeper_has_not(pool: asyncpg.Pool) -> None:
    """A clock that jumps (or a process whose sweeper has not run): the key still lands."""
    store = _store(pool)
    far = datetime.now(UTC) + timedelta(days=40)
    await _write(store, far, _record("jump", far + timedelta(minutes=5)))
    assert await _load(store, far + timedelta(minutes=4), "jump")


async def test_the_lookup_probes_live_partitions_by_index_and_prunes_expired_ones(
    pool: asyncpg.Pool,
) -> None:
    store = _store(pool)
    now = datetime.now(UTC)
    await store.maintain_idempotency(now, now + timedelta(minutes=8), drop=False)
    for i in range(400):
        await _write(store, now, _record(f"p{i}", now + timedelta(seconds=i % 400 + 5)))
    async with store.batch() as unit:
        conn = unit._conn  # the writer's connection: generic plans, index paths only
        await conn.execute(
            "PREPARE l(text[], text[], uuid[], text[], text[], text[], timestamptz, text[], text[], int4)"
            f" AS {postgres._LOAD}"
        )
        later = now + timedelta(minutes=4)
        rows = await conn.fetch(
            "EXPLAIN (ANALYZE, COSTS OFF) EXECUTE"
            f" l('{{c}}', '{{p1}}', '{{}}', '{{}}', '{{}}', '{{}}', '{later.isoformat()}',"
            " '{}', '{}', 10, '{}', '{}')"
        )
        await conn.execute("DEALLOCATE l")
    plan = "\n".join(r[0] for r in rows)
    assert "Seq Scan on idempotency" not in plan, plan
    assert "Index Scan using idempotency_p" in plan, plan
    assert "Subplans Removed" in plan, plan  # expired partitions not even probed


async def test_the_migration_keeps_existing_keys(tmp_path: Path) -> None:
    """A version-1 database with keys: after 0002 they are still found, in a legacy partition."""
    database = await TestDatabase.create("ledger_retention_upgrade")
    try:
        conn = await asyncpg.connect(database.url)
        try:
            await conn.execute((MIGRATIONS / "0001_init.sql").read_text())
            await conn.execute(
                "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now());"
                " INSERT INTO schema_migrations VALUES (1, '0001_init.sql')"
            )
            await conn.execute(
                "INSERT INTO idempotency SELECT 'c', 'old' || g, 'Grant', '\\x01', '{\"none\": {}}',"
                " now() - g * interval '1 minute' FROM generate_series(1, 500) AS g"
            )
        finally:
            await conn.close()
        assert "0002_retention.sql" in await migrate(database.url)
        p = await create_pool(database.url, PoolSettings(min_size=1, max_size=3))
        try:
            store = PostgresStore(p, idempotency_partition=WIDTH)
            now = datetime.now(UTC)
            assert await _load(store, now, "old1")
            assert await _load(store, now + timedelta(days=6), "old500")
            assert not await _load(store, now + timedelta(days=7, seconds=1), "old1")
            async with p.acquire() as conn:
                assert await conn.fetchval("SELECT count(*) FROM idempotency_legacy") == 500
            # The same key again is a replay, not a second row.
            await _write(store, now, _record("new", now + timedelta(days=1)))
            assert await _rows(p, "old1") == 1
            await store.close()
        finally:
            await p.close()
    finally:
        await database.drop()
