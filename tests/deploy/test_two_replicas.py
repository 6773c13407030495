"""Two `ledger serve` processes on one fresh database, as a Deployment with 2 replicas runs.

What must hold when replicas share a database and nothing else:
- both start at the same moment on an empty database: the migrations race and
  are applied exactly once (advisory lock);
- concurrent grants, charges and reserve/settle spread over both replicas;
- the same idempotency key sent to both replicas at once: one effect, and both
  replies equal (one of them marked `idempotent-replayed`);
- short-ttl reservations expire with both sweepers running, none twice;
- afterwards both drain cleanly on SIGTERM and `python -m ledger verify` exits 0.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg
import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from creditledger.v1.ledger_pb2_grpc import LedgerServiceStub
from google.protobuf.duration_pb2 import Duration

from tests.support import db as support_db
from tests.support.process import REPO, ServerProcess
from tests.support.rpc import replayed

if TYPE_CHECKING:  # the async stub type exists only in the generated .pyi
    from creditledger.v1.ledger_pb2_grpc import LedgerServiceAsyncStub

pytestmark = pytest.mark.timeout(120)

ASSET = "crm_credits"
ACCOUNTS = 6
GRANT = 10_000
LOAD_OPS = 240  # bounded: about 10 s on a busy 2-core machine
CONCURRENCY = 24
DUPLICATE_PAIRS = 30
SHORT_TTL_RESERVATIONS = 16
EXPIRY_WAIT_S = 15.0


@dataclass
class Replica:
    process: ServerProcess
    channel: grpc.aio.Channel
    stub: LedgerServiceAsyncStub


@pytest.fixture
async def fresh_database() -> AsyncIterator[support_db.TestDatabase]:
    """Not the session database: this one must be unmigrated when the replicas start."""
    db = await support_db.TestDatabase.create("ledger_replicas")
    yield db
    await db.drop()


@pytest.fixture
async def replicas(
    fresh_database: support_db.TestDatabase, tmp_path: Any
) -> AsyncIterator[list[Replica]]:
    processes = [
        ServerProcess(
            fresh_database.url,
            extra_args=["--sweep-interval-s", "0.2", "--log-format", "text"],
            log_path=tmp_path / f"replica-{n}.log",
        )
        for n in range(2)
    ]
    try:
        # Both Popen within milliseconds of each other, then wait for SERVING.
        await asyncio.gather(*(asyncio.to_thread(p.start, 60.0) for p in processes))
    except BaseException:
        for p in processes:
            p.kill()
        for n in range(2):
            log = tmp_path / f"replica-{n}.log"
            if log.exists():
                sys.stderr.write(f"--- replica {n} log ---\n{log.read_text()[-4000:]}\n")
        raise
    out = []
    for p in processes:
        channel = grpc.aio.insecure_channel(p.target)
        out.append(Replica(p, channel, LedgerServiceStub(channel)))
    try:
        yield out
    finally:
        for r in out:
            await r.channel.close()
        for r in out:
            r.process.kill()


def _key() -> str:
    return uuid.uuid4().hex


async def _call(method: Any, request: Any) -> tuple[Any, bool]:
    """(response or the RpcError's (code, details), replayed) of one unary call."""
    call = method(request)
    try:
        response = await call
    except grpc.aio.AioRpcError as err:
        return (err.code(), err.details()), replayed(err.trailing_metadata())
    return response, replayed(await call.trailing_metadata())


async def _balance(stub: LedgerServiceAsyncStub, account_id: str) -> pb.Balance:
    reply = await stub.GetBalance(pb.GetBalanceRequest(account_id=account_id, asset=ASSET))
    return reply.balance


async def _setup_accounts(replicas: list[Replica], prefix: str, count: int) -> list[str]:
    accounts = [f"{prefix}-{n}-{uuid.uuid4().hex[:8]}" for n in range(count)]
    for n, account in enumerate(accounts):
        stub = replicas[n % 2].stub
        await stub.CreateAccount(pb.CreateAccountRequest(account_id=account))
        await replicas[(n + 1) % 2].stub.Grant(
            pb.GrantRequest(account_id=account, asset=ASSET, amount=GRANT, idempotency_key=_key())
        )
    return accounts


async def _one_operation(replicas: list[Replica], accounts: list[str], rng: random.Random) -> str:
    """A random command on a random replica; a reserve is settled through the other one."""
    first, other = rng.sample(replicas, 2)
    account = rng.choice(accounts)
    kind = rng.choice(["charge", "charge", "reserve_settle", "grant"])
    if kind == "charge":
        await first.stub.Charge(
            pb.ChargeRequest(account_id=account, asset=ASSET, amount=1, idempotency_key=_key())
        )
    elif kind == "grant":
        await first.stub.Grant(
            pb.GrantRequest(account_id=account, asset=ASSET, amount=3, idempotency_key=_key())
        )
    else:
        reply = await first.stub.Reserve(
            pb.ReserveRequest(account_id=account, asset=ASSET, amount=5, idempotency_key=_key())
        )
        await other.stub.Settle(
            pb.SettleRequest(
                reservation_id=reply.reservation.reservation_id,
                amount=3,
                final=True,
                idempotency_key=_key(),
            )
        )
    return kind


async def _drive_load(replicas: list[Replica], accounts: list[str]) -> dict[str, int]:
    rng = random.Random(7)
    gate = asyncio.Semaphore(CONCURRENCY)
    counts: dict[str, int] = {}

    async def one() -> None:
        async with gate:
            kind = await _one_operation(replicas, accounts, rng)
            counts[kind] = counts.get(kind, 0) + 1

    await asyncio.gather(*(one() for _ in range(LOAD_OPS)))
    return counts


async def _duplicates_on_both_replicas(replicas: list[Replica], account: str) -> None:
    """Each key goes to both replicas at once: exactly one effect, equal replies."""
    a, b = replicas
    for n in range(DUPLICATE_PAIRS):
        if n % 3 == 2:
            request: Any = pb.GrantRequest(
                account_id=account, asset=ASSET, amount=10, idempotency_key=_key()
            )
            calls = (_call(a.stub.Grant, request), _call(b.stub.Grant, request))
        else:
            request = pb.ChargeRequest(
                account_id=account, asset=ASSET, amount=1, idempotency_key=_key()
            )
            calls = (_call(a.stub.Charge, request), _call(b.stub.Charge, request))
        (first, first_replayed), (second, second_replayed) = await asyncio.gather(*calls)
        assert first == second, f"replicas answered the same key differently: {first} vs {second}"
        assert [first_replayed, second_replayed].count(True) == 1, "exactly one execution"
    balance = await _balance(a.stub, account)
    grants = DUPLICATE_PAIRS // 3
    charges = DUPLICATE_PAIRS - grants
    assert balance.granted == GRANT + 10 * grants
    assert balance.settled == charges
    assert balance.available == GRANT + 10 * grants - charges


async def _short_ttl_reservations(replicas: list[Replica], accounts: list[str]) -> list[str]:
    ids = []
    for n in range(SHORT_TTL_RESERVATIONS):
        reply = await replicas[n % 2].stub.Reserve(
            pb.ReserveRequest(
                account_id=accounts[n % len(accounts)],
                asset=ASSET,
                amount=2,
                idempotency_key=_key(),
                ttl=Duration(seconds=1),
            )
        )
        ids.append(reply.reservation.reservation_id)
    return ids


async def _wait_swept(database_url: str, reservation_ids: list[str]) -> None:
    """The sweepers (not a read) must move every one to expired; reads would hide a lag."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + EXPIRY_WAIT_S
        while True:
            still_open = await conn.fetchval(
                "SELECT count(*) FROM reservations"
                " WHERE reservation_id = ANY($1::uuid[]) AND state = 'open'",
                reservation_ids,
            )
            if still_open == 0:
                break
            assert time.monotonic() < deadline, f"{still_open} reservations never swept"
            await asyncio.sleep(0.2)
        expiries = await conn.fetch(
            "SELECT reservation_id, count(DISTINCT transaction_id) AS transactions FROM entries"
            " WHERE reservation_id = ANY($1::uuid[]) AND movement = 'reservation_expiry'"
            " GROUP BY reservation_id",
            reservation_ids,
        )
        assert len(expiries) == len(reservation_ids)
        assert all(row["transactions"] == 1 for row in expiries), "a reservation expired twice"
    finally:
        await conn.close()


async def _migrations_applied_once(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    versions = [r["version"] for r in rows]
    files = sorted(
        int(p.name.split("_", 1)[0])
        for p in (REPO / "ledger" / "storage" / "migrations").glob("*.sql")
    )
    assert versions == files


async def test_two_replicas_on_one_database_stay_consistent(
    replicas: list[Replica], fresh_database: support_db.TestDatabase
) -> None:
    started = time.monotonic()
    await _migrations_applied_once(fresh_database.url)
    # Both raced for the advisory lock on an empty database; one of them won.
    logs = [r.process.log_path.read_text() for r in replicas if r.process.log_path]
    assert sum("applied migration" in log for log in logs) == 1, logs

    accounts = await _setup_accounts(replicas, "load", ACCOUNTS)
    (duplicates_account,) = await _setup_accounts(replicas, "dupes", 1)
    expiring = await _short_ttl_reservations(replicas, accounts)

    # Load, duplicates and the expiry of the short holds all overlap.
    counts, _ = await asyncio.gather(
        _drive_load(replicas, accounts),
        _duplicates_on_both_replicas(replicas, duplicates_account),
    )
    assert sum(counts.values()) == LOAD_OPS
    await _wait_swept(fresh_database.url, expiring)

    # Both replicas see the same balances (one database, no replica-local state).
    for account in itertools.islice(accounts, 3):
        a, b = await asyncio.gather(*(_balance(r.stub, account) for r in replicas))
        assert a == b
        assert a.reserved == 0, "every hold was settled or expired"

    codes = await asyncio.gather(*(asyncio.to_thread(r.process.stop, 20.0) for r in replicas))
    assert codes == [0, 0], "SIGTERM drains and exits 0"

    result = subprocess.run(
        [sys.executable, "-m", "ledger", "verify", "--database-url", fresh_database.url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every invariant holds" in result.stdout
    assert time.monotonic() - started < 90
