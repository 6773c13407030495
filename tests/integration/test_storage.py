"""Storage guarantees against the real PostgreSQL: immutability, migrations, verify."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from creditledger.v1.ledger_pb2_grpc import LedgerServiceAsyncStub

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator

import asyncpg
import pytest
from creditledger.v1 import ledger_pb2 as pb

from ledger.storage import pool as pool_module
from ledger.storage.pool import migrate
from ledger.storage.verify import verify
from tests.conftest import key, new_account
from tests.support.db import TestDatabase
from tests.support.process import REPO


@pytest.fixture
async def scratch_db() -> AsyncIterator[TestDatabase]:
    """A database of its own, for tests that break things on purpose."""
    db = await TestDatabase.create("ledger_scratch")
    yield db
    await db.drop()


async def test_entries_cannot_be_updated_or_deleted(
    stub: LedgerServiceAsyncStub, database_url: str
) -> None:
    await new_account(stub, grant=5)
    conn = await asyncpg.connect(database_url)
    try:
        for sql in (
            "UPDATE entries SET amount = amount + 1",
            "DELETE FROM entries",
            "TRUNCATE entries",
        ):
            with pytest.raises(asyncpg.PostgresError, match="immutable"):
                await conn.execute(sql)
    finally:
        await conn.close()


async def test_concurrent_migrations_apply_once(scratch_db: TestDatabase) -> None:
    results = await asyncio.gather(*(migrate(scratch_db.url) for _ in range(5)))
    applied = [name for r in results for name in r]
    # Exactly one process applied each of them.
    assert applied == [name for _, name, _ in pool_module._migrations()]
    assert await migrate(scratch_db.url) == []


async def corrupt_and_verify(db: TestDatabase, sql: str) -> set[str]:
    conn = await asyncpg.connect(db.url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()
    return set((await verify(db.url)).violations)


async def seed(db: TestDatabase) -> None:
    """A small consistent ledger, made through the real rules (a second app on the scratch DB)."""
    from ledger.app import App
    from ledger.config import Config

    app = App(Config(listen="127.0.0.1:0", database_url=db.url, metrics_listen="", drain_s=0.5))
    await app.start()
    try:
        import grpc

        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            from creditledger.v1.ledger_pb2_grpc import LedgerServiceStub as Stub

            stub = Stub(ch)
            await stub.CreateAccount(pb.CreateAccountRequest(account_id="victim"))
            await stub.Grant(
                pb.GrantRequest(account_id="victim", asset="crm", amount=100, idempotency_key=key())
            )
            r = await stub.Reserve(
                pb.ReserveRequest(
                    account_id="victim", asset="crm", amount=40, idempotency_key=key()
                )
            )
            await stub.Settle(
                pb.SettleRequest(
                    reservation_id=r.reservation.reservation_id, amount=10, idempotency_key=key()
                )
            )
    finally:
        await app.stop()


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            "UPDATE balances SET available = available + 1",
            {"balances_match_entries", "available_matches_lots"},
        ),
        (
            "UPDATE balances SET reserved = reserved - 1",
            {"balances_match_entries", "reserved_matches_open_reservations"},
        ),
        (
            "UPDATE reservations SET settled = settled + 1",
            {"reservation_allocations", "reservation_holds_match_entries"},
        ),
        (
            "UPDATE lots SET remaining = remaining - 1",
            {"available_matches_lots", "lots_match_entries"},
        ),
        (
            "ALTER TABLE entries DISABLE TRIGGER USER; INSERT INTO entries (transaction_id, account_id, asset, amount,"
            " movement, bucket, created_at) VALUES (gen_random_uuid(), 'victim', 'crm', 5, 'grant', 'available', now())",
            {"transactions_balance", "assets_balance", "balances_match_entries"},
        ),
        (
            # A journal row whose balance-after disagrees with the entries before it.
            "ALTER TABLE entries DISABLE TRIGGER USER;"
            " UPDATE entries SET available_after = available_after + 1"
            " WHERE entry_id = (SELECT max(entry_id) FROM entries WHERE bucket = 'available')",
            {"balance_after_matches_entries", "statements_reconcile"},
        ),
    ],
)
async def test_verify_catches_each_kind_of_corruption(
    scratch_db: TestDatabase, sql: str, expected: set[str]
) -> None:
    await seed(scratch_db)
    assert (await verify(scratch_db.url)).ok
    found = await corrupt_and_verify(scratch_db, sql)
    assert expected <= found, found


async def test_verify_cli_exit_codes(scratch_db: TestDatabase) -> None:
    await seed(scratch_db)
    cmd = [sys.executable, "-m", "ledger", "verify", "--database-url", scratch_db.url]
    ok = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "every invariant holds" in ok.stdout
    await corrupt_and_verify(scratch_db, "UPDATE balances SET available = available + 7")
    bad = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert "FAIL balances_match_entries" in bad.stdout


async def test_migration_0009_backfills_the_balance_after_each_existing_entry(
    scratch_db: TestDatabase,
) -> None:
    """A journal written before the change stream gets its balance-after columns
    from the running sums, in entry order, and xid 1 (before every new row)."""
    conn = await asyncpg.connect(scratch_db.url)
    try:
        await conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version, name, sql in pool_module._migrations():
            if version >= 9:
                break
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2)", version, name)
        rows = [  # (account, amount, movement, bucket): a grant, a reserve, a settle
            ("@issuance", -10, "grant", "system"),
            ("old", 10, "grant", "available"),
            ("old", -4, "reserve", "available"),
            ("old", 4, "reserve", "held"),
            ("old", -3, "settle", "held"),
            ("@consumed", 3, "settle", "system"),
        ]
        for account, amount, movement, bucket in rows:
            await conn.execute(
                "INSERT INTO entries (transaction_id, account_id, asset, amount, movement, bucket,"
                " created_at) VALUES (gen_random_uuid(), $1, 'crm', $2, $3, $4, now())",
                account,
                amount,
                movement,
                bucket,
            )
    finally:
        await conn.close()
    assert await migrate(scratch_db.url) == [
        name for v, name, _ in pool_module._migrations() if v >= 9
    ]
    conn = await asyncpg.connect(scratch_db.url)
    try:
        after = await conn.fetch(
            "SELECT xid::text, available_after, reserved_after, granted_after, settled_after"
            " FROM entries WHERE account_id = 'old' ORDER BY entry_id"
        )
    finally:
        await conn.close()
    assert [tuple(r) for r in after] == [
        ("1", 10, 0, 10, 0),
        ("1", 6, 0, 10, 0),
        ("1", 6, 4, 10, 0),
        ("1", 6, 1, 10, 3),
    ]


async def test_migration_0020_backfills_the_accounts_a_split_hold_draws_on(
    scratch_db: TestDatabase,
) -> None:
    """Holds written before version 20: a three-level split gets the member and
    the middle pool in held_on (not the top it is filed under), a hold on one
    account's lots stays empty; `ledger verify` then finds them all consistent,
    and reports a split hold written without held_on (an old writer's)."""
    conn = await asyncpg.connect(scratch_db.url)
    try:
        await conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version, name, sql in pool_module._migrations():
            if version >= 20:
                break
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2)", version, name)
        insert = (
            "INSERT INTO reservations (reservation_id, account_id, asset, amount, settled,"
            " released, refunded, state, created_at, expires_at, metadata, allocations, member_id)"
            " VALUES ($1::uuid, 'top', 'sms', 20, 0, 0, 0, 'closed', now(), now(), '{}',"
            " $2::jsonb, $3)"
        )
        split = (
            '[{"lot_id": "00000000-0000-0000-0000-000000000001", "drawn": 5, "settled": 0,'
            ' "released": 5, "refunded": 0, "account_id": "m"},'
            ' {"lot_id": "00000000-0000-0000-0000-000000000002", "drawn": 3, "settled": 0,'
            ' "released": 3, "refunded": 0, "account_id": "team"},'
            ' {"lot_id": "00000000-0000-0000-0000-000000000003", "drawn": 12, "settled": 0,'
            ' "released": 12, "refunded": 0}]'
        )
        single = (
            '[{"lot_id": "00000000-0000-0000-0000-000000000003", "drawn": 20, "settled": 0,'
            ' "released": 20, "refunded": 0}]'
        )
        await conn.execute(insert, "00000000-0000-0000-0000-00000000000a", split, "m")
        await conn.execute(insert, "00000000-0000-0000-0000-00000000000b", single, "m")
    finally:
        await conn.close()
    assert await migrate(scratch_db.url) == [
        name for v, name, _ in pool_module._migrations() if v >= 20
    ]
    conn = await asyncpg.connect(scratch_db.url)
    try:
        held_on = await conn.fetch(
            "SELECT reservation_id::text, held_on FROM reservations ORDER BY 1"
        )
        assert [(r[0][-1], r[1]) for r in held_on] == [("a", ["m", "team"]), ("b", [])]
        report = await verify(scratch_db.url)
        assert "reservation_held_on" in report.checked
        assert "reservation_held_on" not in report.violations
        # A split hold written without it (an old writer's, during a rolling upgrade).
        await conn.execute("UPDATE reservations SET held_on = '{}'")
        report = await verify(scratch_db.url)
        assert [str(v["reservation_id"]) for v in report.violations["reservation_held_on"]] == [
            "00000000-0000-0000-0000-00000000000a"
        ]
    finally:
        await conn.close()
