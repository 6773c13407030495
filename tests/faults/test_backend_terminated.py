"""The server's idle pooled connections are killed by PostgreSQL (pg_terminate_backend).

That is what an operator, a failover or a `pg_ctl -m fast` restart does. The
next call that picks such a connection must still get a clean answer: OK (the
server retries on a fresh connection) or UNAVAILABLE, never INTERNAL.
Found by the torture run with seed 102 (three INTERNAL answers, each a few
seconds after a pg_terminate_backend fault).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import grpc
import pytest
from creditledger.v1 import ledger_pb2, ledger_pb2_grpc

from tests.faults.calls import ASSET, funded_account, new_key, sync_stub
from tests.faults.proxy import TcpProxy
from tests.torture.rpc import CHANNEL_OPTIONS, call_aio
from tests.torture.server import LedgerServer, run_verify

# Until the first bad answer, at most this long (it usually shows within 10 s).
LOAD_S = 30.0
CLIENTS = 16
CLEAN = {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}

pytestmark = pytest.mark.timeout(180)


async def terminate_backends(admin_url: str, database: str) -> int:
    conn = await asyncpg.connect(admin_url)
    try:
        killed: int = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
            database,
        )
        return killed
    finally:
        await conn.close()


@pytest.fixture
def tcp_server(fresh_database_url: str, tmp_path: Path) -> Iterator[LedgerServer]:
    """A server reaching PostgreSQL over TCP, as in production.

    The embedded PostgreSQL of the suite listens on a unix socket, where the bug
    below does not show; the proxy gives the server a TCP path to it.
    """
    proxy = TcpProxy.for_database(fresh_database_url)
    proxy.start()
    server = LedgerServer(proxy.url_for(fresh_database_url), tmp_path / "server.log")
    server.start()
    yield server
    server.stop()
    proxy.close()


def request_for(method: str, account: str) -> Any:
    if method == "GetBalance":
        return ledger_pb2.GetBalanceRequest(account_id=account, asset=ASSET)
    cls = getattr(ledger_pb2, f"{method}Request")
    return cls(account_id=account, asset=ASSET, amount=1, idempotency_key=new_key())


async def test_calls_while_backends_are_terminated(
    tcp_server: LedgerServer, pg_admin_url: str, fresh_database_url: str
) -> None:
    ledger_process = tcp_server
    database = urlsplit(fresh_database_url).path.lstrip("/")
    with sync_stub(ledger_process.target) as sstub:
        accounts = [await asyncio.to_thread(funded_account, sstub, 10**9) for _ in range(4)]
    codes: Counter[str] = Counter()
    bad: list[str] = []
    end = time.monotonic() + LOAD_S

    async def worker(seed: int, stub: Any) -> None:
        rng = random.Random(seed)
        while time.monotonic() < end and not bad:
            method = rng.choice(["Charge", "Reserve", "Grant", "GetBalance"])
            result = await call_aio(
                getattr(stub, method), request_for(method, rng.choice(accounts)), 5
            )
            codes[result.code.name] += 1
            if result.code not in CLEAN:
                bad.append(f"{method}: {result.describe()} {result.message}")

    async def killer() -> None:
        rng = random.Random(0)
        while time.monotonic() < end and not bad:
            await asyncio.sleep(rng.uniform(0.1, 1.0))
            await terminate_backends(pg_admin_url, database)

    async with grpc.aio.insecure_channel(ledger_process.target, options=CHANNEL_OPTIONS) as channel:
        stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        await asyncio.gather(killer(), *(worker(i, stub) for i in range(CLIENTS)))
    assert codes["OK"] > 100 or bad, codes
    assert not bad, (codes, bad[:10])
    code, output = await asyncio.to_thread(run_verify, fresh_database_url)
    assert code == 0, output
