"""`python -m tests.bench.read_cost`: GetBalance's storage read, alone.

`PostgresStore.snapshot` of one account (what GetBalance and the other reads of
an account at an instant run on a pool connection: the writer's batch read in a
read-only REPEATABLE READ transaction) on a database of --accounts funded
accounts, analyzed: no gRPC, no writer, no other process. It shows what the
mixed workload of the bench cannot separate from the writes around it
(docs/performance.md, round eight).

    python -m tests.bench.read_cost [--accounts 10000] [--reads 2000] [--concurrency 8]
                                    [--database-url URL]

prints the sequential latency (p50, p99, mean) and the rate with --concurrency
reads in flight on a pool of that many connections. Without --database-url it
makes a database of its own on LEDGER_BENCH_DATABASE_URL's server (or the
embedded PostgreSQL) and drops it after; with one, that database must be new
(it is migrated and filled).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from ledger.domain.workingset import WorkingSet
from ledger.storage.pool import PoolSettings, create_pool, migrate
from ledger.storage.postgres import PostgresStore
from tests.bench import database

ASSET = "crm"
WARMUP_READS = 200
CONCURRENT_S = 5.0


async def _fill(url: str, accounts: int) -> None:
    await migrate(url)
    conn = await asyncpg.connect(url)
    try:
        now = datetime.now(UTC)
        await conn.executemany(
            "INSERT INTO accounts (account_id, created_at) VALUES ($1, $2)",
            [(f"a{i}", now) for i in range(accounts)],
        )
        await conn.executemany(
            "INSERT INTO balances VALUES ($1, $2, 5, 0, 5, 0, 0, 0)",
            [(f"a{i}", ASSET) for i in range(accounts)],
        )
        await conn.executemany(
            "INSERT INTO lots VALUES ($1, $2, $3, 5, 5, 0, 'seed', NULL, $4)",
            [(uuid.uuid4(), f"a{i}", ASSET, now) for i in range(accounts)],
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def _read(store: PostgresStore, account_id: str) -> float:
    ws = WorkingSet(now=datetime.now(UTC), refund_grace=timedelta(days=7))
    started = time.perf_counter()
    await store.snapshot(ws, account_id=account_id)
    elapsed = time.perf_counter() - started
    if (account_id, ASSET) not in ws.balances:
        raise AssertionError(f"snapshot of {account_id} has no {ASSET} balance")
    return elapsed


async def _measure(url: str, accounts: int, reads: int, concurrency: int) -> str:
    await _fill(url, accounts)
    pool = await create_pool(url, PoolSettings(min_size=concurrency, max_size=concurrency))
    store = PostgresStore(pool)
    try:
        for i in range(min(WARMUP_READS, reads)):
            await _read(store, f"a{i % accounts}")
        lat = sorted([await _read(store, f"a{i % accounts}") for i in range(reads)])
        deadline = time.perf_counter() + CONCURRENT_S

        async def worker(k: int) -> int:
            n = 0
            while time.perf_counter() < deadline:
                await _read(store, f"a{(k * 7919 + n) % accounts}")
                n += 1
            return n

        done = await asyncio.gather(*(worker(k) for k in range(concurrency)))
    finally:
        await store.close()
        await pool.close()
    p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return (
        f"read_cost: snapshot of one account p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms,"
        f" mean {statistics.mean(lat) * 1e3:.2f} ms ({reads} sequential reads);"
        f" {sum(done) / CONCURRENT_S:.0f} reads/s at {concurrency} in flight;"
        f" {accounts} accounts"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.read_cost", description=__doc__)
    ap.add_argument("--accounts", type=int, default=10_000)
    ap.add_argument("--reads", type=int, default=2_000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument(
        "--database-url", default="", help="a new database to use (else one of its own)"
    )
    args = ap.parse_args(argv)
    if args.database_url:
        print(asyncio.run(_measure(args.database_url, args.accounts, args.reads, args.concurrency)))
        return
    with tempfile.TemporaryDirectory(prefix="read-cost-") as tmp:
        pg = database.locate(os.environ.get("LEDGER_BENCH_DATABASE_URL"), Path(tmp) / "pg")
        name = f"creditledger_read_cost_{os.getpid()}"
        url = database.create_database(pg, name)
        try:
            print(asyncio.run(_measure(url, args.accounts, args.reads, args.concurrency)))
        finally:
            database.drop_database(pg, name)


if __name__ == "__main__":
    main()
