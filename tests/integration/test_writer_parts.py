"""A transaction written in parts (WriterSettings.save_part_commands), against
real PostgreSQL.

While PostgreSQL writes part k of a large transaction, the writer applies part
k+1 in Python. The parts are statements of one SERIALIZABLE transaction, split
at command boundaries, so the result must be exactly what one statement writes:
the same balances, journal, reservations and answers, whatever rows the parts
share. A transaction abandoned while a part is in flight must write nothing,
and its retry everything once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from ledger.domain import commands as c
from ledger.domain import limits
from ledger.domain.model import BatchResult, ReservationResult
from ledger.domain.rules import WorkingSet
from ledger.service.clock import SystemClock
from ledger.service.ports import IdempotencyRecord
from ledger.service.writer import Writer, WriterSettings
from ledger.storage import verify
from ledger.storage.pool import PoolSettings, create_pool, migrate
from ledger.storage.postgres import PgBatch, PostgresStore
from tests.support.db import TestDatabase
from tests.support.units import WrappedUnit

pytestmark = pytest.mark.timeout(120)
ASSET = "crm"
ACCOUNTS = 6
PART = 16


class CountingStore:
    """The real PostgresStore; counts the statements written ahead (parts whose
    write ran while the next part was applied)."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self.reachable = True
        self.ahead = 0

    @asynccontextmanager
    async def batch(self, more_waiting: Any = None) -> AsyncIterator[_CountingUnit]:
        async with self._store.batch(more_waiting) as unit:
            yield _CountingUnit(unit, self)


class _CountingUnit(WrappedUnit):
    def __init__(self, unit: PgBatch, store: CountingStore) -> None:
        super().__init__(unit)
        self._store = store

    async def save_ahead(
        self, ws: WorkingSet, records: list[IdempotencyRecord]
    ) -> asyncio.Future[None]:
        self._store.ahead += 1
        return await super().save_ahead(ws, records)


@pytest.fixture
async def db() -> AsyncIterator[TestDatabase]:
    database = await TestDatabase.create("ledger_writer_parts")
    await migrate(database.url)
    yield database
    await database.drop()


@asynccontextmanager
async def writer_on(url: str, part: int) -> AsyncIterator[tuple[Writer, CountingStore]]:
    pool = await create_pool(url, PoolSettings(min_size=1, max_size=4))
    store = PostgresStore(pool)
    counting = CountingStore(store)
    writer = Writer(counting, SystemClock(), WriterSettings(save_part_commands=part))  # type: ignore[arg-type]
    writer.start()
    try:
        yield writer, counting
    finally:
        await writer.stop()
        await store.close()
        await pool.close()


def _script(caller: str, accounts: list[str], holds: list[str]) -> list[c.BatchCommand]:
    """One transaction's commands whose parts share rows: charges on six
    accounts throughout, a hold settled in one part and refunded in a later one,
    a key used twice (a replay) and reused for another request, a refusal."""
    cmds: list[c.BatchCommand] = []
    for i in range(130):
        cmds.append(c.Charge(caller, f"k{i}", accounts[i % ACCOUNTS], ASSET, 1 + i % 3))
    cmds[10] = c.Settle(caller, "settle0", holds[0], 20)
    cmds[40] = c.Refund(caller, "refund0", holds[0], 5)  # a later part: the same hold
    cmds[30] = c.Release(caller, "release1", holds[1])
    cmds[50] = c.Settle(caller, "settle2", holds[2], 50, final=True)
    cmds[110] = c.Refund(caller, "refund2", holds[2], 10)
    cmds[70] = c.Charge(caller, "k3", accounts[3], ASSET, 1 + 3 % 3)  # replays part 1's
    cmds[80] = c.Charge(caller, "k5", accounts[0], ASSET, 7)  # the key, another request
    cmds[100] = c.Charge(caller, "k100", accounts[5], ASSET, 10_000)  # insufficient
    return cmds


async def _run_script(url: str, part: int) -> tuple[list[str], dict[str, Any], int]:
    """Accounts funded and held in earlier transactions, then the script in one;
    the answers (kind, replayed) and what the tables hold, keyed by position."""
    prefix = f"p{part}-{uuid.uuid4().hex[:6]}"
    accounts = [f"{prefix}-{i}" for i in range(ACCOUNTS)]
    async with writer_on(url, part) as (writer, counting):
        store = writer._store._store  # type: ignore[attr-defined]
        now = SystemClock().now()
        for i, a in enumerate(accounts):
            await store.create_account(a, {}, now)
            await writer.submit(c.Grant(prefix, f"g{i}", a, ASSET, 1_000))
        holds: list[str] = []
        for i in range(3):
            held, _ = await writer.submit(c.Reserve(prefix, f"r{i}", accounts[i], ASSET, 50))
            assert isinstance(held, ReservationResult)
            holds.append(held.reservation.reservation_id)
        before = counting.ahead
        result, _ = await writer.submit(
            c.Batch(prefix, "batch", tuple(_script(prefix, accounts, holds)))
        )
        ahead = counting.ahead - before
    assert isinstance(result, BatchResult)
    answers = [
        f"{type(o).__name__}:{getattr(o, 'reason', '')}:{replayed}"
        for o, replayed in result.outcomes
    ]
    conn = await asyncpg.connect(url)
    try:
        rows: dict[str, Any] = {}
        for i, a in enumerate(accounts):
            rows[f"balance{i}"] = tuple(
                await conn.fetchrow(
                    "SELECT available, reserved, granted, settled, refunded, expired, version"
                    " FROM balances WHERE account_id = $1 AND asset = $2",
                    a,
                    ASSET,
                )
            )
        rows["entries"] = [
            (
                accounts.index(r["account_id"]) if r["account_id"] in accounts else r["account_id"],
                r["amount"],
                r["movement"],
                r["bucket"],
                r["idempotency_key"],
            )
            for r in await conn.fetch(
                "SELECT account_id, amount, movement, bucket, idempotency_key FROM entries"
                " WHERE caller = $1 ORDER BY entry_id",
                prefix,
            )
        ]
        rows["holds"] = [
            tuple(
                await conn.fetchrow(
                    "SELECT amount, settled, released, refunded, state FROM reservations"
                    " WHERE reservation_id = $1",
                    h,
                )
            )
            for h in holds
        ]
        rows["records"] = await conn.fetchval(
            "SELECT count(*) FROM idempotency WHERE caller = $1", prefix
        )
    finally:
        await conn.close()
    return answers, rows, ahead


async def test_a_transaction_written_in_parts_writes_what_one_statement_writes(
    db: TestDatabase,
) -> None:
    whole_answers, whole_rows, whole_ahead = await _run_script(db.url, 0)
    parts_answers, parts_rows, parts_ahead = await _run_script(db.url, PART)
    assert whole_ahead == 0
    # 130 commands, minus the two answered from others: 8 parts of 16 plus the last.
    assert parts_ahead >= 7, f"the script was written in {parts_ahead + 1} statements"
    assert parts_answers == whole_answers
    assert parts_answers[70] == "ReservationResult::True"
    assert parts_answers[80].startswith("IdempotencyKeyReused:IDEMPOTENCY_KEY_REUSED")
    assert parts_answers[100].startswith("InsufficientCredits:INSUFFICIENT_CREDITS")
    assert parts_rows == whole_rows
    report = await verify.verify(db.url)
    assert report.ok, report.violations


async def test_a_transaction_abandoned_while_a_part_is_written_writes_nothing_then_all_once(
    db: TestDatabase,
) -> None:
    """A command in a late part needs more lots than the read brought
    (rules.LotsNotLoaded): the transaction is abandoned while the part before
    is still being written, and runs again with the pair read whole. The
    statement in flight ends before the rollback, so the connection is kept,
    not dropped (a ROLLBACK sent beside it fails and drops it); every command
    is written once."""
    count = limits.LOTS_LOADED_FIRST + 8
    prefix = f"lots-{uuid.uuid4().hex[:6]}"
    deep, other = f"{prefix}-deep", f"{prefix}-other"
    async with writer_on(db.url, PART) as (writer, counting):
        store = writer._store._store  # type: ignore[attr-defined]
        now = SystemClock().now()
        await store.create_account(deep, {}, now)
        await store.create_account(other, {}, now)
        await writer.submit(c.Grant(prefix, "g-other", other, ASSET, 1_000))
        for i in range(count):
            await writer.submit(c.Grant(prefix, f"g{i}", deep, ASSET, 1, priority=count - i))
        pid = store._writer_conn.get_server_pid()
        cmds: list[c.BatchCommand] = [
            c.Charge(prefix, f"k{i}", other, ASSET, 1) for i in range(3 * PART)
        ]
        cmds.append(c.Charge(prefix, "deep", deep, ASSET, count - 2))  # past the lots read
        result, _ = await writer.submit(c.Batch(prefix, "batch", tuple(cmds)))
        assert counting.ahead >= 2, "no part was written ahead: the test proved nothing"
        assert store._writer_conn.get_server_pid() == pid, "the writer's connection was dropped"
    assert isinstance(result, BatchResult)
    assert all(isinstance(o, ReservationResult) for o, _ in result.outcomes)
    conn = await asyncpg.connect(db.url)
    try:
        charged = await conn.fetchval(
            "SELECT count(*) FROM idempotency WHERE caller = $1 AND key LIKE 'k%'", prefix
        )
        spent = await conn.fetchval(
            "SELECT -sum(amount) FROM entries WHERE account_id = $1 AND bucket = 'available'"
            " AND movement <> 'grant'",
            other,
        )
        available = await conn.fetchval(
            "SELECT available FROM balances WHERE account_id = $1", deep
        )
    finally:
        await conn.close()
    assert charged == 3 * PART
    assert spent == 3 * PART
    assert available == 2
    assert (await verify.verify(db.url)).ok
