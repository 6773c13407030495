"""A COMMIT that went through although its answer was lost: the writer's retry
must answer the caller's first try as a first answer, not as a replay.

Found by the torture with fronts (`test_torture_smoke_with_fronts`, seed
20261219, 2026-12-05): `pg_terminate_backend` cut the writer's backend after
its COMMIT had committed and before the answer reached the writer. The writer
ran the batch again, as designed (its idempotency records make that safe),
found the records its own first attempt had written, and answered three
commands "idempotent-replayed: true" although each caller had sent its key
once (`fresh_key_replayed`). A caller that skips its side effects on a replay
(it already handled the first answer) would then skip them for good.

Here the real PostgresStore commits for real and then reports the connection
broken, as a backend terminated between its commit and its answer does.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from ledger.domain import commands as c
from ledger.domain import errors
from ledger.domain.model import BatchResult, ReservationResult
from ledger.service.clock import SystemClock
from ledger.service.ports import StorageUnavailable
from ledger.service.writer import Writer, WriterSettings
from ledger.storage.pool import PoolSettings, create_pool, migrate
from ledger.storage.postgres import PostgresStore
from tests.torture.server import run_verify

pytestmark = pytest.mark.timeout(60)
ASSET = "crm"


class AnswerLostStore:
    """The real store; the next `lose` transactions commit, then raise as if the
    connection had broken before COMMIT's answer arrived."""

    def __init__(self, store: PostgresStore, url: str) -> None:
        self._store = store
        self._url = url
        self.lose = 0
        # With `lose`: the records just committed are made another writer's (their
        # instant moved back a millisecond), as if this writer's COMMIT had failed
        # and a writer elected meanwhile had recorded the same outcomes first.
        self.as_another_writers = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    @asynccontextmanager
    async def batch(self, more_waiting: Any = None) -> AsyncIterator[Any]:
        async with self._store.batch(more_waiting) as unit:
            yield unit
        if self.lose > 0:
            self.lose -= 1
            if self.as_another_writers:
                conn = await asyncpg.connect(self._url)
                try:
                    await conn.execute(
                        "UPDATE idempotency SET expires_at = expires_at - interval '1 ms',"
                        " created_at = created_at - interval '1 ms'"
                        " WHERE created_at = (SELECT max(created_at) FROM idempotency)"
                    )
                finally:
                    await conn.close()
            raise StorageUnavailable("connection lost after COMMIT (injected)")


@asynccontextmanager
async def writer_on(url: str) -> AsyncIterator[tuple[Writer, AnswerLostStore]]:
    await migrate(url)
    pool = await create_pool(url, PoolSettings(min_size=1, max_size=4))
    store = PostgresStore(pool)
    lossy = AnswerLostStore(store, url)
    writer = Writer(lossy, SystemClock(), WriterSettings())
    writer.start()
    try:
        yield writer, lossy
    finally:
        await writer.stop()
        await store.close()
        await pool.close()


async def _funded(writer: Writer, store: AnswerLostStore, caller: str, amount: int) -> str:
    account = f"{caller}-acct"
    await store.create_account(account, {}, SystemClock().now())
    await writer.submit(c.Grant(caller, "grant", account, ASSET, amount))
    return account


async def test_a_lost_commit_answer_is_not_answered_as_a_replay(fresh_database_url: str) -> None:
    caller = f"t-{uuid.uuid4().hex[:8]}"
    async with writer_on(fresh_database_url) as (writer, store):
        account = await _funded(writer, store, caller, 100)

        store.lose = 1
        charged, replayed = await writer.submit(c.Charge(caller, "charge", account, ASSET, 30))
        assert store.lose == 0, "the injected loss did not happen"
        assert isinstance(charged, ReservationResult)
        assert not replayed, "the caller's first try answered as a replay"
        again, replayed = await writer.submit(c.Charge(caller, "charge", account, ASSET, 30))
        assert replayed and isinstance(again, ReservationResult)
        assert again.reservation.reservation_id == charged.reservation.reservation_id

        store.lose = 1  # a refusal is recorded too, and answered the same way
        with pytest.raises(errors.InsufficientCredits) as refused:
            await writer.submit(c.Charge(caller, "too-much", account, ASSET, 1_000))
        assert not refused.value.replayed, "the caller's first try answered as a replay"
        with pytest.raises(errors.InsufficientCredits) as refused_again:
            await writer.submit(c.Charge(caller, "too-much", account, ASSET, 1_000))
        assert refused_again.value.replayed

        store.lose = 1  # a batch: its first command with a key is first, a duplicate a replay
        batch, _ = await writer.submit(
            c.Batch(
                caller,
                "",
                (
                    c.Charge(caller, "b1", account, ASSET, 1),
                    c.Charge(caller, "b1", account, ASSET, 1),
                    c.Charge(caller, "b2", account, ASSET, 2),
                ),
            )
        )
        assert isinstance(batch, BatchResult)
        assert [r for _, r in batch.outcomes] == [False, True, False]

    conn = await asyncpg.connect(fresh_database_url)
    try:
        settled = await conn.fetchval(
            "SELECT settled FROM balances WHERE account_id = $1 AND asset = $2", account, ASSET
        )
    finally:
        await conn.close()
    assert settled == 30 + 1 + 2, "each charge applied once"
    code, output = run_verify(fresh_database_url)
    assert code == 0, output


async def test_the_same_refusal_recorded_by_another_writer_is_a_replay(
    fresh_database_url: str,
) -> None:
    """This writer's attempt did not commit, and a writer elected meanwhile recorded
    a duplicate of the key first, with the same refusal (a refusal carries no id,
    so the outcomes are equal). The retry's caller sent a duplicate: it is told
    "replayed", as any duplicate of a recorded key is. The records' expiry (made
    from the recording transaction's instant) tells the two writers' records apart."""
    caller = f"t-{uuid.uuid4().hex[:8]}"
    async with writer_on(fresh_database_url) as (writer, store):
        account = await _funded(writer, store, caller, 100)
        store.lose, store.as_another_writers = 1, True
        with pytest.raises(errors.InsufficientCredits) as refused:
            await writer.submit(c.Charge(caller, "too-much", account, ASSET, 1_000))
        assert store.lose == 0, "the injected loss did not happen"
        assert refused.value.replayed, "another writer's record answered as this caller's first"
