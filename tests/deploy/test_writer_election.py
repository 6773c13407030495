"""One writer per database (issue 22): replicas elect it through PostgreSQL and
forward their commands to it; a killed writer is replaced; a paused one is fenced.

Each test runs real `ledger serve` processes on one fresh database.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import asyncpg
import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from creditledger.v1.ledger_pb2_grpc import LedgerServiceStub

from tests.support import db as support_db
from tests.support.process import REPO, ServerProcess, free_port
from tests.support.rpc import error_info

if TYPE_CHECKING:
    from creditledger.v1.ledger_pb2_grpc import LedgerServiceAsyncStub

pytestmark = pytest.mark.timeout(180)

ASSET = "sms"
LEASE_S = "1.5"
EVENT_WAIT_S = 30.0  # an upper bound for "eventually", never a performance claim


class Replica:
    def __init__(self, url: str, tmp_path: Any, n: int, extra: tuple[str, ...] = ()) -> None:
        self.internal = f"127.0.0.1:{free_port()}"
        self.process = ServerProcess(
            url,
            extra_args=[
                "--internal-listen", self.internal,
                "--writer-lease-s", LEASE_S,
                "--sweep-interval-s", "0.2",
                "--log-format", "text",
                *extra,
            ],
            log_path=tmp_path / f"replica-{n}.log",
        )  # fmt: skip
        self.channel: grpc.aio.Channel | None = None
        self.stub: LedgerServiceAsyncStub | None = None

    def connect(self) -> None:
        self.channel = grpc.aio.insecure_channel(self.process.target)
        self.stub = LedgerServiceStub(self.channel)

    def signal(self, sig: signal.Signals) -> None:
        assert self.process.proc is not None
        os.kill(self.process.proc.pid, sig)

    def log(self) -> str:
        path = self.process.log_path
        return path.read_text() if path is not None and path.exists() else ""


@pytest.fixture
async def database() -> AsyncIterator[support_db.TestDatabase]:
    db = await support_db.TestDatabase.create("ledger_election")
    yield db
    await db.drop()


@pytest.fixture
async def start_replicas(
    database: support_db.TestDatabase, tmp_path: Any
) -> AsyncIterator[Callable[..., Any]]:
    started: list[Replica] = []

    async def start(count: int, *extra: str) -> list[Replica]:
        replicas = [Replica(database.url, tmp_path, len(started) + n, extra) for n in range(count)]
        started.extend(replicas)
        await asyncio.gather(*(asyncio.to_thread(r.process.start, 60.0) for r in replicas))
        for r in replicas:
            r.connect()
        return replicas

    try:
        yield start
    finally:
        for r in started:
            with contextlib.suppress(ProcessLookupError, AssertionError):
                r.signal(signal.SIGCONT)
            if r.channel is not None:
                await r.channel.close()
            r.process.kill()
        for n, r in enumerate(started):
            sys.stderr.write(f"--- replica {n} ---\n{r.log()[-3000:]}\n")


async def lease(url: str) -> asyncpg.Record:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow("SELECT term, holder, address FROM writer_lease WHERE id = 1")
        assert row is not None
        return row
    finally:
        await conn.close()


async def writer_of(url: str, replicas: list[Replica], after_term: int = 0) -> tuple[Replica, int]:
    """The replica holding the lease, once its term is past `after_term` and it is alive."""
    deadline = time.monotonic() + EVENT_WAIT_S
    while True:
        row = await lease(url)
        found = [r for r in replicas if r.internal == row["address"]]
        if row["term"] > after_term and found and found[0].process.proc.poll() is None:  # type: ignore[union-attr]
            return found[0], row["term"]
        assert time.monotonic() < deadline, f"no new writer after term {after_term}: {dict(row)}"
        await asyncio.sleep(0.05)


async def setup_account(stub: LedgerServiceAsyncStub, amount: int = 1_000_000) -> str:
    account = f"acct-{uuid.uuid4().hex[:10]}"
    await stub.CreateAccount(pb.CreateAccountRequest(account_id=account))
    await stub.Grant(
        pb.GrantRequest(
            account_id=account, asset=ASSET, amount=amount, idempotency_key=uuid.uuid4().hex
        )
    )
    return account


async def charge_until_answered(
    replicas: list[Replica], account: str, key: str, first: int
) -> tuple[int, int]:
    """Charge 1 with `key`, retrying UNAVAILABLE with the same key on the next replica.
    Returns (attempts, replayed answers)."""
    request = pb.ChargeRequest(account_id=account, asset=ASSET, amount=1, idempotency_key=key)
    deadline = time.monotonic() + EVENT_WAIT_S
    n = first
    attempts = 0
    while True:
        replica = replicas[n % len(replicas)]
        n += 1
        if replica.process.proc is None or replica.process.proc.poll() is not None:
            continue
        attempts += 1
        assert replica.stub is not None
        call = replica.stub.Charge(request, timeout=10)
        try:
            await call
            trailers = await call.trailing_metadata()
            return attempts, int(any(k == "idempotent-replayed" for k, _ in trailers or ()))
        except grpc.aio.AioRpcError as err:
            assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), (
                err
            )
            assert time.monotonic() < deadline, f"{key} never answered: {err}"
            await asyncio.sleep(0.05)


async def verify(url: str) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "ledger", "verify", "--database-url", url],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


async def settled(stub: LedgerServiceAsyncStub, account: str) -> int:
    reply = await stub.GetBalance(pb.GetBalanceRequest(account_id=account, asset=ASSET))
    return reply.balance.settled


async def test_one_writer_and_every_replica_forwards(
    start_replicas: Callable[..., Any], database: support_db.TestDatabase
) -> None:
    replicas: list[Replica] = await start_replicas(3)
    writer, term = await writer_of(database.url, replicas)
    account = await setup_account(replicas[0].stub)  # type: ignore[arg-type]
    keys = [uuid.uuid4().hex for _ in range(90)]
    await asyncio.gather(
        *(charge_until_answered(replicas, account, k, n) for n, k in enumerate(keys))
    )
    for r in replicas:  # reads are local, and every replica sees every charge
        assert await settled(r.stub, account) == len(keys)  # type: ignore[arg-type]
    logs = {r: r.log() for r in replicas}
    assert "elected the writer" in logs[writer]
    assert sum("elected the writer" in log for log in logs.values()) == 1
    assert (await lease(database.url))["term"] == term, "no writer changed while all were healthy"
    await verify(database.url)


async def test_a_killed_writer_is_replaced_and_nothing_acknowledged_is_lost(
    start_replicas: Callable[..., Any], database: support_db.TestDatabase
) -> None:
    replicas: list[Replica] = await start_replicas(3)
    writer, term = await writer_of(database.url, replicas)
    account = await setup_account(replicas[0].stub)  # type: ignore[arg-type]
    keys = [uuid.uuid4().hex for _ in range(400)]
    gate = asyncio.Semaphore(24)

    async def one(n: int, key: str) -> tuple[int, int]:
        async with gate:
            return await charge_until_answered(replicas, account, key, n)

    load = asyncio.gather(*(one(n, k) for n, k in enumerate(keys)))
    kills = 0
    for _ in range(2):  # kill the writer twice under load
        await asyncio.sleep(0.5)
        writer.process.kill()
        kills += 1
        writer, term = await writer_of(database.url, replicas, term)
    answers = await load
    assert sum(a for a, _ in answers) >= len(keys)
    alive = [r for r in replicas if r.process.proc is not None and r.process.proc.poll() is None]
    assert len(alive) == 3 - kills
    # Every key answered OK exactly once in effect: one credit per key, no more.
    assert await settled(alive[0].stub, account) == len(keys)  # type: ignore[arg-type]
    await verify(database.url)


async def _wait_lock_waiter(url: str, deadline_s: float = EVENT_WAIT_S) -> None:
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + deadline_s
        while not await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'"
        ):
            assert time.monotonic() < deadline, "the writer's batch never waited on the lock"
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def test_a_paused_writer_is_fenced_and_its_batch_never_commits(
    start_replicas: Callable[..., Any], database: support_db.TestDatabase
) -> None:
    # A batch timeout longer than the pause: on SIGCONT the paused writer goes on with
    # its batch and sends the COMMIT (a shorter one would abandon the batch instead,
    # which is safe too but would not put the fence to the test).
    replicas: list[Replica] = await start_replicas(2, "--batch-timeout-s", "60")
    old, term = await writer_of(database.url, replicas)
    other = next(r for r in replicas if r is not old)
    assert old.stub is not None and other.stub is not None
    stuck, free = await setup_account(old.stub), await setup_account(old.stub)
    key = uuid.uuid4().hex

    # Hold the stuck account's balance row, so the writer's batch waits inside its
    # transaction (loaded, saving); then pause the writer past its lease.
    blocker = await asyncpg.connect(database.url)
    await blocker.execute("BEGIN")
    await blocker.execute("SELECT 1 FROM balances WHERE account_id = $1 FOR UPDATE", stuck)
    request = pb.ChargeRequest(account_id=stuck, asset=ASSET, amount=1, idempotency_key=key)
    in_flight = asyncio.ensure_future(old.stub.Charge(request, timeout=60))
    await _wait_lock_waiter(database.url)
    old.signal(signal.SIGSTOP)
    await blocker.execute("ROLLBACK")  # the paused writer's save now completes, uncommitted
    await blocker.close()

    new, _ = await writer_of(database.url, replicas, term)
    assert new is other
    await other.stub.Charge(
        pb.ChargeRequest(account_id=free, asset=ASSET, amount=1, idempotency_key=uuid.uuid4().hex),
        timeout=30,
    )
    old.signal(signal.SIGCONT)  # it sends its COMMIT now: the fence must refuse it
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await in_flight
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).reason == "WRITER_UNAVAILABLE"

    conn = await asyncpg.connect(database.url)
    try:
        recorded = await conn.fetchval("SELECT count(*) FROM idempotency WHERE key = $1", key)
    finally:
        await conn.close()
    assert recorded == 0, "the deposed writer's batch committed"
    # The retry with the same key runs once, on the new writer (through either replica).
    _, replayed = await charge_until_answered(replicas, stuck, key, 0)
    assert replayed == 0
    assert await settled(other.stub, stuck) == 1
    assert "no longer the writer" in old.log()
    await verify(database.url)


async def _charge_refused(stub: LedgerServiceAsyncStub, account: str) -> str:
    request = pb.ChargeRequest(
        account_id=account, asset=ASSET, amount=1, idempotency_key=uuid.uuid4().hex
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Charge(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value
    return str(error_info(caught.value).reason)


async def test_a_never_writer_replica_forwards_and_streams_but_never_takes_the_lease(
    start_replicas: Callable[..., Any], database: support_db.TestDatabase
) -> None:
    """`serve --never-writer`: the replica change-stream consumers are pointed at, so
    that their work stays off the writer (docs/operations.md)."""
    (follower,) = await start_replicas(1, "--never-writer")
    assert follower.stub is not None
    # Alone, it elects nobody: commands are refused, the lease stays unheld.
    assert await _charge_refused(follower.stub, "acct-none") == "WRITER_UNAVAILABLE"
    assert (await lease(database.url))["term"] == 0

    (first,) = await start_replicas(1)
    writer, term = await writer_of(database.url, [follower, first])
    assert writer is first
    stream = follower.stub.WatchTransactions(pb.WatchTransactionsRequest(), timeout=60)
    account = await setup_account(follower.stub)  # forwarded to the writer
    key = uuid.uuid4().hex
    _, replayed = await charge_until_answered([follower], account, key, 0)
    assert replayed == 0
    assert await settled(follower.stub, account) == 1
    seen: list[str] = []
    async for msg in stream:  # the follower serves the stream itself
        seen += [t.idempotency_key for t in msg.transactions]
        if key in seen:
            break
    stream.cancel()

    # The writer dies: the follower still never takes the lease.
    first.process.kill()
    await asyncio.sleep(3 * float(LEASE_S))
    row = await lease(database.url)
    assert row["term"] == term and row["address"] == first.internal, dict(row)
    assert await _charge_refused(follower.stub, account) == "WRITER_UNAVAILABLE"
    assert "elected the writer" not in follower.log()

    (second,) = await start_replicas(1)
    assert (await writer_of(database.url, [follower, second], term))[0] is second
    await charge_until_answered([follower], account, uuid.uuid4().hex, 0)
    assert await settled(follower.stub, account) == 2
    await verify(database.url)
