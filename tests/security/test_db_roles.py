"""Issue 15, item 4: a least-privilege serving role, and `serve` that checks the
schema instead of migrating.

`ledger migrate --serving-role NAME` (run as the owner) creates NAME with only
the rights the serving code uses. Connected as NAME, against the real
PostgreSQL: changing or deleting journal entries, switching the journal's
immutability trigger off, and DDL all fail; and every RPC still works through
a server that logs in as NAME.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from creditledger.v1 import ledger_pb2_grpc
from google.protobuf import duration_pb2
from prometheus_client import REGISTRY

from ledger.app import App, StartupError
from ledger.config import Config
from ledger.service.clock import OffsetClock
from ledger.storage import idempotency as idem
from tests.support.db import TestDatabase
from tests.support.process import REPO

pytestmark = pytest.mark.timeout(180)
ASSET = "crm_credits"


def _as_role(url: str, role: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{role}:{password}@{host}", parts.path, parts.query, ""))


def _migrate(url: str, *extra: str, password: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    if password:
        env["LEDGER_SERVING_ROLE_PASSWORD"] = password
    return subprocess.run(
        [sys.executable, "-m", "ledger", "migrate", "--database-url", url, *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


class Roles:
    def __init__(self, db: TestDatabase, role: str, password: str) -> None:
        self.db = db
        self.role = role
        self.password = password

    @property
    def serving_url(self) -> str:
        return _as_role(self.db.url, self.role, self.password)


@pytest.fixture(scope="module")
async def roles() -> AsyncIterator[Roles]:
    db = await TestDatabase.create(prefix="ledger_roles")
    role = f"ledger_serving_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    try:
        out = _migrate(db.url, "--serving-role", role, password=password)
        assert out.returncode == 0, out.stderr
        assert password not in out.stdout + out.stderr
        # Every table, partitions included, has its rights decided (no catch-all grant).
        assert "SERVING_RIGHTS" not in out.stderr, out.stderr
        assert "ledger maintain: " in out.stdout, out.stdout  # partitions made at once
        yield Roles(db, role, password)
    finally:
        await db.drop()
        conn = await asyncpg.connect(db.admin_url)
        try:
            await conn.execute(f'DROP ROLE IF EXISTS "{role}"')
        finally:
            await conn.close()


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE entries SET amount = amount + 1",
        "DELETE FROM entries",
        "TRUNCATE entries",
        "ALTER TABLE entries DISABLE TRIGGER entries_no_update_delete",
        "ALTER TABLE entries DISABLE TRIGGER ALL",
        "SET session_replication_role = replica",
        "CREATE TABLE evil (x int)",
        "DROP TABLE idempotency",
        "ALTER TABLE balances ADD COLUMN x int",
        "CREATE FUNCTION evil() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "DELETE FROM balances",
        "DELETE FROM accounts",
        "UPDATE schema_migrations SET version = 0",
        "CREATE ROLE evil",
    ],
)
async def test_the_serving_role_cannot_rewrite_history_or_the_schema(
    roles: Roles, statement: str
) -> None:
    conn = await asyncpg.connect(roles.serving_url)
    try:
        with pytest.raises(asyncpg.PostgresError) as info:
            await conn.execute(statement)
        assert (
            isinstance(
                info.value, asyncpg.InsufficientPrivilegeError | asyncpg.InvalidSchemaNameError
            )
            or "permission denied" in str(info.value)
            or "must be owner" in str(info.value)
        ), info.value
    finally:
        await conn.close()


async def test_the_serving_role_owns_nothing_and_has_no_role_attributes(roles: Roles) -> None:
    conn = await asyncpg.connect(roles.db.url)
    try:
        row = await conn.fetchrow(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls FROM pg_roles"
            " WHERE rolname = $1",
            roles.role,
        )
        assert row is not None and not any(row.values())
        owned = await conn.fetchval(
            "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner"
            " WHERE r.rolname = $1",
            roles.role,
        )
        assert owned == 0
    finally:
        await conn.close()


def _serving_config(roles: Roles) -> Config:
    return Config(
        listen="127.0.0.1:0",
        database_url=roles.serving_url,
        metrics_listen="",
        pool_size_max=3,
        sweep_interval_s=0.2,
        drain_s=1.0,
        migrate_at_start=False,
    )


async def test_every_rpc_works_as_the_serving_role(
    roles: Roles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    app = App(_serving_config(roles))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            s = ledger_pb2_grpc.LedgerServiceStub(ch)
            a, b = (f"roles-{n}-{uuid.uuid4().hex[:8]}" for n in "ab")
            for acct in (a, b):
                await s.CreateAccount(pb.CreateAccountRequest(account_id=acct))
                await s.Grant(
                    pb.GrantRequest(account_id=acct, asset=ASSET, amount=100, idempotency_key=_k())
                )
            await s.GetAccount(pb.GetAccountRequest(account_id=a))
            held = await s.Reserve(
                pb.ReserveRequest(account_id=a, asset=ASSET, amount=10, idempotency_key=_k())
            )
            rid = held.reservation.reservation_id
            await s.GetReservation(pb.GetReservationRequest(reservation_id=rid))
            await s.Settle(
                pb.SettleRequest(reservation_id=rid, amount=4, final=True, idempotency_key=_k())
            )
            await s.Refund(pb.RefundRequest(reservation_id=rid, amount=2, idempotency_key=_k()))
            other = await s.Reserve(
                pb.ReserveRequest(account_id=a, asset=ASSET, amount=3, idempotency_key=_k())
            )
            await s.Release(
                pb.ReleaseRequest(
                    reservation_id=other.reservation.reservation_id, idempotency_key=_k()
                )
            )
            await s.Charge(
                pb.ChargeRequest(account_id=b, asset=ASSET, amount=5, idempotency_key=_k())
            )
            group = await s.ReserveGroup(
                pb.ReserveGroupRequest(
                    legs=[
                        pb.ReserveGroupLeg(account_id=a, asset=ASSET, amount=1, leg_key="a"),
                        pb.ReserveGroupLeg(account_id=b, asset=ASSET, amount=1, leg_key="b"),
                    ],
                    idempotency_key=_k(),
                    metadata={"order": "42"},
                )
            )
            await s.GetReservationGroup(
                pb.GetReservationGroupRequest(group_id=group.group.group_id)
            )
            balance = await s.GetBalance(pb.GetBalanceRequest(account_id=a, asset=ASSET))
            assert balance.balance.available == 100 - 4 + 2 - 1
            page = await s.ListEntries(pb.ListEntriesRequest(account_id=a, asset=ASSET))
            assert len(page.entries) >= 4
            # The sweeper writes as the serving role too: a 1 s hold expires in storage.
            short = await s.Reserve(
                pb.ReserveRequest(
                    account_id=b,
                    asset=ASSET,
                    amount=1,
                    idempotency_key=_k(),
                    ttl=duration_pb2.Duration(seconds=1),
                )
            )
            await _eventually_expired(roles.db.url, short.reservation.reservation_id)
            # Partition maintenance is `ledger maintain`'s (the owner's): the server only
            # looks how far they reach, says so once, and never tries the DDL.
            await app.sweeper.maintain_once()
            ahead_s = REGISTRY.get_sample_value(
                "ledger_idempotency_partitions_ahead_seconds", {"maintained_by": "external"}
            )
            assert ahead_s is not None and ahead_s > 24 * 3600, ahead_s
    finally:
        await app.stop()
    text = caplog.text
    assert text.count("`ledger maintain`") == 1, text
    assert "permission denied" not in text and "must be owner" not in text, text
    assert not [
        r for r in caplog.records if r.name == "ledger.sweeper" and r.levelno >= logging.WARNING
    ], text


async def test_a_key_without_a_partition_answers_unavailable_naming_ledger_maintain(
    roles: Roles,
) -> None:
    """The serving role cannot make a missing partition: the write answers
    UNAVAILABLE (retry with the same key) and names the command that makes it."""
    clock = OffsetClock()
    app = App(_serving_config(roles), clock=clock)
    await app.start()
    try:
        # Four days later with no `ledger maintain` run since: a key written now
        # expires (7 days on) past the last partition, made at most 48 h + 1
        # partition ahead of the 8-day horizon.
        clock.advance(timedelta(days=4))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            s = ledger_pb2_grpc.LedgerServiceStub(ch)
            acct = f"roles-gap-{uuid.uuid4().hex[:8]}"
            await s.CreateAccount(pb.CreateAccountRequest(account_id=acct))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await s.Grant(
                    pb.GrantRequest(account_id=acct, asset=ASSET, amount=5, idempotency_key=_k())
                )
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
        assert "`ledger maintain`" in (info.value.details() or ""), info.value.details()
        ahead_s = REGISTRY.get_sample_value(
            "ledger_idempotency_partitions_ahead_seconds", {"maintained_by": "external"}
        )
        assert ahead_s is not None and ahead_s < 0, ahead_s
    finally:
        await app.stop()


async def test_a_partition_dropped_by_hand_answers_unavailable_not_internal(roles: Roles) -> None:
    """Behind the coverage the server saw (a partition dropped by hand): the insert
    finds no partition; the answer is the same UNAVAILABLE, never INTERNAL."""
    app = App(_serving_config(roles))
    await app.start()
    conn = await asyncpg.connect(roles.db.url)
    try:
        week = datetime.now(UTC) + timedelta(days=7)
        (victim,) = [
            p
            for p in await idem.partitions(conn)
            if p.lower is not None and p.lower <= week < p.upper
        ]
        await conn.execute(f"ALTER TABLE idempotency DETACH PARTITION {victim.name}")
        await conn.execute(f"DROP TABLE {victim.name}")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            s = ledger_pb2_grpc.LedgerServiceStub(ch)
            acct = f"roles-drop-{uuid.uuid4().hex[:8]}"
            await s.CreateAccount(pb.CreateAccountRequest(account_id=acct))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await s.Grant(
                    pb.GrantRequest(account_id=acct, asset=ASSET, amount=5, idempotency_key=_k())
                )
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
        assert "`ledger maintain`" in (info.value.details() or ""), info.value.details()
    finally:
        await conn.close()
        await app.stop()
        assert _maintain(roles.db.url).returncode == 0  # the owner makes it again


async def test_serve_as_the_serving_role_refuses_without_partitions() -> None:
    db = await TestDatabase.create(prefix="ledger_nopart")
    role = f"ledger_serving_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    try:
        assert _migrate(db.url, "--serving-role", role, password=password).returncode == 0
        conn = await asyncpg.connect(db.url)
        try:
            for p in await idem.partitions(conn):
                await conn.execute(f"ALTER TABLE idempotency DETACH PARTITION {p.name}")
                await conn.execute(f"DROP TABLE {p.name}")
        finally:
            await conn.close()
        cfg = _serving_config(Roles(db, role, password))
        with pytest.raises(StartupError, match="run `ledger maintain` as the database owner"):
            await App(cfg).start()
    finally:
        await db.drop()
        conn = await asyncpg.connect(db.admin_url)
        try:
            await conn.execute(f'DROP ROLE IF EXISTS "{role}"')
        finally:
            await conn.close()


def _maintain(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    return subprocess.run(
        [sys.executable, "-m", "ledger", "maintain", "--database-url", url, *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


async def test_ledger_maintain_as_the_owner_makes_partitions_ahead_and_drops_expired() -> None:
    db = await TestDatabase.create(prefix="ledger_maint")
    width = timedelta(hours=12)
    try:
        assert _migrate(db.url).returncode == 0
        conn = await asyncpg.connect(db.url)
        try:
            now = datetime.now(UTC)
            # Expired partitions (as if maintenance had stopped days ago) ...
            await idem.ensure(conn, now - timedelta(days=3), now - timedelta(days=2), width)
            expired = {p.name for p in await idem.partitions(conn) if p.upper <= now}
            assert len(expired) >= 2
            # ... and the far end missing.
            last = (await idem.partitions(conn))[-1]
            await conn.execute(f"ALTER TABLE idempotency DETACH PARTITION {last.name}")
            await conn.execute(f"DROP TABLE {last.name}")
            short = await idem.covered_until(conn, now)
            out = _maintain(db.url, "--ahead-hours", "72")
            assert out.returncode == 0, out.stderr
            lines = out.stdout.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("ledger maintain: "), out.stdout
            names = {p.name for p in await idem.partitions(conn)}
            assert not names & expired, names & expired
            ready = await idem.covered_until(conn, datetime.now(UTC))
            # The longest retention (7 days) + 2 partitions + 72 h, from now.
            assert ready >= now + timedelta(days=7) + 2 * width + timedelta(hours=72), ready
            assert ready > short
            # Idempotent: a second round changes nothing.
            again = _maintain(db.url, "--ahead-hours", "72")
            assert again.returncode == 0, again.stderr
            assert "0 idempotency partitions created, 0 expired ones dropped" in again.stdout
            assert {p.name for p in await idem.partitions(conn)} == names
        finally:
            await conn.close()
    finally:
        await db.drop()


async def _eventually_expired(owner_url: str, reservation_id: str) -> None:
    conn = await asyncpg.connect(owner_url)
    try:
        for _ in range(200):
            state = await conn.fetchval(
                "SELECT state FROM reservations WHERE reservation_id = $1",
                uuid.UUID(reservation_id),
            )
            if state == "expired":
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"the sweeper did not expire the hold (state {state})")
    finally:
        await conn.close()


async def test_serve_refuses_a_schema_it_does_not_know() -> None:
    db = await TestDatabase.create(prefix="ledger_schema")
    try:
        cfg = Config(
            listen="127.0.0.1:0", database_url=db.url, metrics_listen="", migrate_at_start=False
        )
        with pytest.raises(StartupError, match="no ledger schema"):
            await App(cfg).start()
        assert _migrate(db.url).returncode == 0
        conn = await asyncpg.connect(db.url)
        try:
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (9999, '9999_future.sql')"
            )
        finally:
            await conn.close()
        with pytest.raises(StartupError, match=r"schema version\(s\) \[9999\] that this server"):
            await App(cfg).start()
    finally:
        await db.drop()


def test_the_cli_serve_does_not_migrate_a_database_url() -> None:
    from ledger.cli import build_parser
    from ledger.config import from_args

    env_before = os.environ.pop("LEDGER_MIGRATE_AT_START", None)
    try:
        parse = build_parser().parse_args
        assert not from_args(
            parse(["serve", "--database-url", "postgresql://x/y"])
        ).migrate_at_start
        assert from_args(parse(["serve"])).migrate_at_start  # the embedded `make run`
        assert from_args(
            parse(["serve", "--database-url", "postgresql://x/y", "--migrate-at-start"])
        ).migrate_at_start
    finally:
        if env_before is not None:
            os.environ["LEDGER_MIGRATE_AT_START"] = env_before


def _k() -> str:
    return uuid.uuid4().hex
