"""A multi-host database URL whose first host hangs, and a node that turned read-only.

The hung host is a TCP proxy in blackhole mode (it accepts the connection and
never says a word, as a SIGSTOPped or partitioned primary does); the real
PostgreSQL comes second in the URL. asyncpg's own multi-host connect tries the
hosts in turn under one timeout, so the first host eats it all: the control
assertions below show that, and the tests show that the ledger's racing
connector (ledger/storage/hosts.py) reaches the second host anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from creditledger.v1 import ledger_pb2

from ledger.service.ports import StorageUnavailable
from ledger.storage import hosts
from ledger.storage.pool import PoolSettings, create_pool, migrate
from ledger.storage.postgres import PostgresStore
from tests.faults.calls import ASSET, funded_account, new_key, sync_stub, until_definitive
from tests.faults.proxy import TcpProxy
from tests.torture.pg import free_port
from tests.torture.server import LedgerServer

pytestmark = pytest.mark.timeout(120)
CONNECT_TIMEOUT_S = 2.0


@pytest.fixture
def hung_host() -> Iterator[TcpProxy]:
    """A host:port that accepts TCP and never answers."""
    proxy = TcpProxy("127.0.0.1", free_port())
    proxy.start()
    proxy.cut("blackhole")
    yield proxy
    proxy.close()


def multi_host_url(database_url: str, *ports: int, attrs: str = "read-write") -> str:
    parts = urlsplit(database_url)
    if parts.hostname is None:
        # The embedded PostgreSQL (no LEDGER_TEST_DATABASE_URL) listens on a Unix
        # socket only, and a host list here mixes it with TCP hosts.
        pytest.skip("needs PostgreSQL over TCP: set LEDGER_TEST_DATABASE_URL (CI does)")
    real = f"{parts.hostname}:{parts.port or 5432}"
    listed = ",".join(real if p == 0 else f"127.0.0.1:{p}" for p in ports)
    return f"postgresql://{parts.username or 'postgres'}@{listed}{parts.path}?target_session_attrs={attrs}"


async def test_asyncpg_alone_gives_up_on_a_hung_first_host(
    fresh_database_url: str, hung_host: TcpProxy
) -> None:
    """The control: why the ledger races the hosts (asyncpg 0.29-0.32's behaviour)."""
    url = multi_host_url(fresh_database_url, hung_host.port, 0)
    with pytest.raises(TimeoutError):
        await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S)


async def test_racing_connect_reaches_the_host_after_a_hung_one(
    fresh_database_url: str, hung_host: TcpProxy
) -> None:
    url = multi_host_url(fresh_database_url, hung_host.port, 0)
    conn = await hosts.connect(url, CONNECT_TIMEOUT_S)
    try:
        assert await conn.fetchval("SELECT NOT pg_is_in_recovery()") is True
        assert conn._addr[1] == (urlsplit(fresh_database_url).port or 5432)
    finally:
        await conn.close()


async def test_no_host_of_the_role_names_every_host_and_why(
    fresh_database_url: str, hung_host: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    refused = free_port()
    # The only live server is a primary: asking for a standby fails on each host
    # for its own reason, and each gets its own log line.
    url = multi_host_url(fresh_database_url, hung_host.port, refused, 0, attrs="standby")
    with (
        caplog.at_level(logging.WARNING, logger="ledger.storage.hosts"),
        pytest.raises(hosts.NoHostAvailable) as failed,
    ):
        await hosts.connect(url, CONNECT_TIMEOUT_S)
    message = str(failed.value)
    assert f"127.0.0.1:{hung_host.port} no answer within" in message
    assert f"127.0.0.1:{refused} connection refused" in message
    assert "a primary (not in recovery), not standby" in message
    lines = [r.getMessage() for r in caplog.records if r.name == "ledger.storage.hosts"]
    assert len(lines) == 3, lines
    assert all(r.exc_info is None for r in caplog.records)


async def test_pool_with_a_hung_first_host(fresh_database_url: str, hung_host: TcpProxy) -> None:
    url = multi_host_url(fresh_database_url, hung_host.port, 0)
    pool = await create_pool(url, PoolSettings(min_size=2, max_size=4))
    try:
        async with pool.acquire(timeout=CONNECT_TIMEOUT_S * 2) as conn:
            assert await conn.fetchval("SELECT 1") == 1
    finally:
        await pool.close()


async def test_read_only_node_is_unavailable_and_its_connection_dropped(
    fresh_database_url: str,
) -> None:
    """SQLSTATE 25006 (what a demoted node answers a write): UNAVAILABLE, never INTERNAL."""
    await migrate(fresh_database_url)
    pool = await create_pool(fresh_database_url, PoolSettings(min_size=1, max_size=1))
    store = PostgresStore(pool)
    database = urlsplit(fresh_database_url).path.lstrip("/")
    admin = await asyncpg.connect(
        fresh_database_url, server_settings={"default_transaction_read_only": "off"}
    )
    try:
        await admin.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
        await pool.expire_connections()  # new sessions start read-only, as on a standby
        before = await store._read(lambda conn: conn.fetchval("SELECT pg_backend_pid()"))
        with pytest.raises(StorageUnavailable, match="25006"):
            await store.create_account("read-only-probe", {}, datetime.now(UTC))
        after = await store._read(lambda conn: conn.fetchval("SELECT pg_backend_pid()"))
        assert after != before, "the connection that hit 25006 was given out again"
    finally:
        await admin.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
        await admin.close()
        await store.close()
        await pool.close()


def test_server_serves_through_a_url_whose_first_host_hangs(
    fresh_database_url: str, hung_host: TcpProxy, tmp_path: Path
) -> None:
    url = multi_host_url(fresh_database_url, hung_host.port, 0)
    server = LedgerServer(url, tmp_path / "server.log")
    server.start()
    try:
        with sync_stub(server.target) as stub:
            account = funded_account(stub, 10)
            grant = ledger_pb2.GrantRequest(
                account_id=account, asset=ASSET, amount=5, idempotency_key=new_key()
            )
            result = until_definitive(stub.Grant, grant, timeout_s=30)
            assert result.ok, result.describe()
    finally:
        server.stop()


async def test_a_silent_statement_retires_every_pooled_connection(fresh_database_url: str) -> None:
    """One statement that got no answer: the pool's other connections to that node
    are replaced too, instead of each costing the next caller one more timeout."""
    proxy = TcpProxy.for_database(fresh_database_url)
    proxy.start()
    url = proxy.url_for(fresh_database_url)
    pool = await create_pool(url, PoolSettings(min_size=2, max_size=2, command_timeout_s=1.0))
    store = PostgresStore(pool)
    try:
        before = await _backend_pids(pool)
        proxy.pause()  # the node stops answering, as when SIGSTOPped
        with pytest.raises(StorageUnavailable, match="TimeoutError"):
            await store._read(lambda conn: conn.fetchval("SELECT 1"))
        proxy.resume()  # it answers again, late: the other connection still works
        after = await _backend_pids(pool)
        assert not after & before, f"connections {after & before} outlived the silent one"
    finally:
        await store.close()
        await pool.close()
        proxy.close()


async def _backend_pids(pool: asyncpg.Pool) -> set[int]:
    """The backends of every pool connection, holding them all at once."""
    conns = [await pool.acquire(timeout=5) for _ in range(pool.get_max_size())]
    try:
        return {await c.fetchval("SELECT pg_backend_pid()") for c in conns}
    finally:
        for c in conns:
            await pool.release(c)
