"""How the writer packs SubmitBatch commands into transactions, against an
in-memory store that counts them: as few as possible, a batch never split,
an atomic batch alone and saving nothing when one of its commands fails."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest

from ledger.domain import commands as c
from ledger.domain import errors
from ledger.domain.model import Balance, BatchResult, Lot
from ledger.domain.rules import PairKey, WorkingSet
from ledger.service.clock import SystemClock
from ledger.service.ports import IdempotencyRecord
from ledger.service.writer import Writer
from tests.support.units import SavesInLine

pytestmark = pytest.mark.timeout(30)
FUNDS = 10


class CountingStore:
    """Every account exists with FUNDS credits; transactions and saves are counted."""

    def __init__(self) -> None:
        self.reachable = True
        self.transactions: list[int] = []  # commands saved per transaction (0: nothing saved)

    @asynccontextmanager
    async def batch(self, more_waiting: Callable[[], bool] | None = None) -> AsyncIterator[Any]:
        unit = _Unit()
        yield unit
        self.transactions.append(unit.saved)


class _Unit(SavesInLine):
    def __init__(self) -> None:
        self.saved = 0

    async def load(
        self,
        ws: WorkingSet,
        keys: list[tuple[str, str]],
        reservation_ids: set[str],
        pairs: set[PairKey],
        account_ids: set[str],
        whole_pairs: set[PairKey],
        lot_ids: frozenset[str] = frozenset(),
    ) -> dict[tuple[str, str], IdempotencyRecord]:
        now = datetime.now(UTC)
        ws.accounts.update(account_ids)
        for account, asset in pairs:
            ws.balances[(account, asset)] = Balance(account, asset, FUNDS, 0, FUNDS, 0, 0, 0)
            ws.add_lot(Lot(str(uuid.uuid4()), account, asset, FUNDS, FUNDS, 100, "", None, now))
        return {}

    async def save(self, ws: WorkingSet, records: list[IdempotencyRecord]) -> None:
        self.saved += len(records)


def charges(n: int, amount: int = 1) -> tuple[c.BatchCommand, ...]:
    return tuple(
        c.Charge("caller", uuid.uuid4().hex, f"a{uuid.uuid4().hex[:6]}", "crm", amount)
        for _ in range(n)
    )


async def run_all(store: CountingStore, *cmds: c.MutatingCommand) -> list[Any]:
    """Queue every command before the writer starts, so they all wait together."""
    writer = Writer(store, SystemClock())  # type: ignore[arg-type]
    tasks = [asyncio.create_task(writer.submit(cmd)) for cmd in cmds]
    await asyncio.sleep(0)  # every submit is queued
    writer.start()
    try:
        return await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await writer.stop()


async def test_batches_and_single_calls_share_one_transaction() -> None:
    store = CountingStore()
    batches = [c.Batch("caller", "", charges(300)) for _ in range(3)]
    singles = [cmd for cmd in charges(10)]
    results = await run_all(store, *batches, *singles)
    assert store.transactions == [910]
    for result, _ in results[:3]:
        assert isinstance(result, BatchResult) and len(result.outcomes) == 300


async def test_a_batch_is_never_split_across_transactions() -> None:
    store = CountingStore()
    await run_all(store, *(c.Batch("caller", "", charges(1000)) for _ in range(2)))
    assert store.transactions == [1000, 1000]


async def test_an_atomic_batch_runs_alone_and_saves_nothing_when_one_fails() -> None:
    store = CountingStore()
    good = c.Batch("caller", "", charges(5), atomic=True)
    bad = c.Batch("caller", "", charges(3) + charges(1, amount=FUNDS + 1), atomic=True)
    results = await run_all(store, *charges(2), good, *charges(2), bad, *charges(1))
    assert store.transactions == [2, 5, 2, 0, 1]
    failure = results[5]
    assert isinstance(failure, errors.InsufficientCredits)
    assert failure.metadata["batch_index"] == "3"
    assert "rolled back" in failure.message
