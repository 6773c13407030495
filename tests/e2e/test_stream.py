"""WatchTransactions: every committed transaction once, in position order, resumable
anywhere, never skipping a transaction that commits after later ones (issue 17)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from creditledger.v1.ledger_pb2_grpc import LedgerServiceAsyncStub

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from creditledger.v1 import ledger_pb2_grpc

from ledger.app import App
from ledger.config import Config
from ledger.domain import limits
from ledger.domain.access import Access, Permission
from ledger.observability import metrics
from ledger.service.stream import ChangeStream, WatchSettings
from ledger.storage import journal
from tests.conftest import RunningServer, key, new_account
from tests.support.rpc import error_info
from tests.support.verify import assert_ledger_consistent

pytestmark = pytest.mark.timeout(60)
ASSET = "crm_credits"


async def take(
    stub: LedgerServiceAsyncStub, req: pb.WatchTransactionsRequest, n: int, timeout_s: float = 10.0
) -> list[pb.StreamedTransaction]:
    """The first `n` transactions the stream sends (checkpoints skipped)."""
    out: list[pb.StreamedTransaction] = []
    call = stub.WatchTransactions(req)
    try:
        async with asyncio.timeout(timeout_s):
            async for msg in call:
                assert not msg.transactions or msg.position == msg.transactions[-1].position
                out.extend(msg.transactions)
                if len(out) >= n:
                    return out[:n]
    finally:
        call.cancel()
    return out


async def test_a_tenants_transactions_with_their_balances_after(
    stub: LedgerServiceAsyncStub,
) -> None:
    tenant = f"t{uuid.uuid4().hex[:8]}-"
    a = await new_account(stub, tenant + "a")
    b = await new_account(stub, tenant + "b")
    other = await new_account(stub, "other", grant=7)
    grant_key, charge_key = key(), key()
    await stub.Grant(
        pb.GrantRequest(account_id=a, asset=ASSET, amount=100, idempotency_key=grant_key)
    )
    await stub.Charge(
        pb.ChargeRequest(account_id=a, asset=ASSET, amount=30, idempotency_key=charge_key)
    )
    res = await stub.Reserve(
        pb.ReserveRequest(account_id=a, asset=ASSET, amount=20, idempotency_key=key())
    )
    await stub.Grant(
        pb.GrantRequest(account_id=b, asset="email_sends", amount=5, idempotency_key=key())
    )
    await stub.Settle(
        pb.SettleRequest(
            reservation_id=res.reservation.reservation_id,
            amount=5,
            final=True,
            idempotency_key=key(),
        )
    )
    assert other

    got = await take(stub, pb.WatchTransactionsRequest(account_prefix=tenant), 5)
    positions = [m.position for m in got]
    assert positions == sorted(positions) and len(set(positions)) == 5
    txs = [m for m in got]
    assert [t.movement for t in txs] == [
        pb.Entry.MOVEMENT_GRANT,
        pb.Entry.MOVEMENT_SETTLE,
        pb.Entry.MOVEMENT_RESERVE,
        pb.Entry.MOVEMENT_GRANT,
        pb.Entry.MOVEMENT_SETTLE,
    ]
    assert (txs[0].caller, txs[0].idempotency_key) == ("local", grant_key)
    assert txs[1].idempotency_key == charge_key
    assert all(e.account_id.startswith(tenant) for t in txs for e in t.entries)
    assert txs[0].balances[0].available == 100 and txs[0].balances[0].granted == 100
    assert (txs[1].balances[0].available, txs[1].balances[0].settled) == (70, 30)
    assert (txs[2].balances[0].available, txs[2].balances[0].reserved) == (50, 20)
    assert txs[2].reservation_id == res.reservation.reservation_id
    assert txs[3].balances[0].asset == "email_sends"
    # The final Settle: 5 consumed, 15 released, in one transaction.
    last = txs[4].balances[0]
    assert (last.available, last.reserved, last.settled) == (65, 0, 35)
    now = await stub.GetBalance(pb.GetBalanceRequest(account_id=a, asset=ASSET))
    # A journal row keeps the pair's amounts; its version, floor and caps are its
    # state now (GetBalance), not history (docs/design.md, "Balances as of any instant").
    amounts = ("available", "reserved", "granted", "settled", "refunded", "expired")
    assert [getattr(last, f) for f in amounts] == [getattr(now.balance, f) for f in amounts]
    assert (last.account_id, last.asset) == (now.balance.account_id, now.balance.asset)

    # The sum of the streamed entries is the balance.
    avail = sum(
        e.amount
        for t in txs
        for e in t.entries
        if e.account_id == a and e.bucket == pb.Entry.BUCKET_AVAILABLE
    )
    assert avail == now.balance.available

    # Filters: one account, one asset.
    only_b = await take(stub, pb.WatchTransactionsRequest(account_id=b), 1)
    assert only_b[0].entries[0].asset == "email_sends"
    only_asset = await take(
        stub, pb.WatchTransactionsRequest(account_prefix=tenant, asset="email_sends"), 1
    )
    assert only_asset[0].position == only_b[0].position


async def test_resume_after_a_position_on_another_replica(
    stub: LedgerServiceAsyncStub, database_url: str
) -> None:
    tenant = f"r{uuid.uuid4().hex[:8]}-"
    acct = await new_account(stub, tenant, grant=1000)
    for _ in range(5):
        await stub.Charge(
            pb.ChargeRequest(account_id=acct, asset=ASSET, amount=1, idempotency_key=key())
        )
    req = pb.WatchTransactionsRequest(account_prefix=tenant)
    first = await take(stub, req, 6)
    # Disconnected after the third; resumed on a fresh process (another replica):
    # exactly the rest, then what commits meanwhile.
    replica = App(
        Config(
            listen="127.0.0.1:0",
            database_url=database_url,
            metrics_listen="127.0.0.1:0",
            sweep_interval_s=60.0,
            drain_s=1.0,
        )
    )
    await replica.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as ch:
            other = ledger_pb2_grpc.LedgerServiceStub(ch)
            resumed_req = pb.WatchTransactionsRequest(
                account_prefix=tenant, after_position=first[2].position
            )
            more = asyncio.create_task(take(other, resumed_req, 5))
            await asyncio.sleep(0.2)
            await stub.Charge(
                pb.ChargeRequest(account_id=acct, asset=ASSET, amount=2, idempotency_key=key())
            )
            await other.Charge(
                pb.ChargeRequest(account_id=acct, asset=ASSET, amount=3, idempotency_key=key())
            )
            rest = await more
    finally:
        await replica.stop()
    assert [m.position for m in rest[:3]] == [m.position for m in first[3:]]
    assert [m.balances[0].available for m in rest[3:]] == [993, 990]


async def test_from_now_sees_only_what_commits_later(stub: LedgerServiceAsyncStub) -> None:
    tenant = f"n{uuid.uuid4().hex[:8]}-"
    acct = await new_account(stub, tenant, grant=10)
    waiting = asyncio.create_task(
        take(stub, pb.WatchTransactionsRequest(account_prefix=tenant, from_now=True), 1)
    )
    await asyncio.sleep(0.3)
    await stub.Charge(
        pb.ChargeRequest(account_id=acct, asset=ASSET, amount=4, idempotency_key=key())
    )
    (msg,) = await waiting
    assert msg.movement == pb.Entry.MOVEMENT_SETTLE


async def _raw_grant_open(conn: asyncpg.Connection, account_id: str, amount: int) -> None:
    """A Grant written by hand inside `conn`'s open transaction, balanced as the
    writer would write it (lot, balance, two entries), not committed yet."""
    lot_id, tx = uuid.uuid4(), uuid.uuid4()
    now = datetime.now(UTC)
    await conn.execute(
        "INSERT INTO lots (lot_id, account_id, asset, amount, remaining, priority, source,"
        " expires_at, created_at) VALUES ($1, $2, $3, $4, $4, 100, 'raw', NULL, $5)",
        lot_id,
        account_id,
        ASSET,
        amount,
        now,
    )
    await conn.execute(
        "INSERT INTO balances (account_id, asset, available, reserved, granted, settled, refunded,"
        " expired, version) VALUES ($1, $2, $3, 0, $3, 0, 0, 0, 1)",  # one change: version 1
        account_id,
        ASSET,
        amount,
    )
    await conn.execute(
        "INSERT INTO entries (transaction_id, account_id, asset, amount, movement, bucket, lot_id,"
        " caller, created_at, available_after, reserved_after, granted_after, settled_after,"
        " refunded_after, expired_after) VALUES"
        " ($1, '@issuance', $3, -$4::int8, 'grant', 'system', $5, 'raw', $6, NULL, NULL, NULL, NULL, NULL, NULL),"
        " ($1, $2, $3, $4::int8, 'grant', 'available', $5, 'raw', $6, $4::int8, 0, $4::int8, 0, 0, 0)",
        tx,
        account_id,
        ASSET,
        amount,
        lot_id,
        now,
    )


@pytest.mark.parametrize("horizon", [True, False], ids=["with-horizon", "naive-reader"])
async def test_a_transaction_that_commits_late_is_never_skipped(
    stub: LedgerServiceAsyncStub,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    horizon: bool,
) -> None:
    """Transaction X takes its id first and stays open while later ones commit.
    The stream holds the later ones back until X ends, then sends X first; a
    consumer that resumes after what it had seen misses nothing. Without the
    horizon (the naive reader: whatever is visible, in order) the same consumer
    skips X for good: the trap this design avoids."""
    if not horizon:
        naive = "'9223372036854775807'::xid8"
        monkeypatch.setattr(journal, "HORIZON", f"SELECT {naive}::text")
        assert journal.HORIZON_OF_SNAPSHOT in journal.PAGE
        monkeypatch.setattr(
            journal, "PAGE", journal.PAGE.replace(journal.HORIZON_OF_SNAPSHOT, naive)
        )
    tenant = f"h{uuid.uuid4().hex[:8]}-"
    slow = await new_account(stub, tenant + "slow")
    fast = await new_account(stub, tenant + "fast")
    req = pb.WatchTransactionsRequest(account_prefix=tenant)
    conn = await asyncpg.connect(database_url)
    try:
        tx = conn.transaction()
        await tx.start()
        await _raw_grant_open(conn, slow, 5)  # X: its xid is now the oldest
        for amount in (1, 2, 3):  # later transactions commit meanwhile
            await stub.Grant(
                pb.GrantRequest(account_id=fast, asset=ASSET, amount=amount, idempotency_key=key())
            )
        seen = await take(stub, req, 3, timeout_s=1.5) if not horizon else []
        if horizon:
            with pytest.raises(TimeoutError):
                await take(stub, req, 1, timeout_s=1.0)  # it waits for X
        await tx.commit()
    finally:
        await conn.close()
    if horizon:
        got = await take(stub, req, 4)
        assert [m.entries[0].account_id for m in got] == [slow, fast, fast, fast]
        assert [m.balances[0].available for m in got] == [5, 1, 3, 6]
        return
    # The naive reader handed out the later three first; resuming after them loses X.
    assert [m.entries[0].account_id for m in seen] == [fast, fast, fast]
    after = pb.WatchTransactionsRequest(account_prefix=tenant, after_position=seen[-1].position)
    with pytest.raises(TimeoutError):
        await take(stub, after, 1, timeout_s=1.0)


async def test_streams_per_caller_are_limited(
    stub: LedgerServiceAsyncStub, ledger_server: RunningServer
) -> None:
    tenant = f"l{uuid.uuid4().hex[:8]}-"
    req = pb.WatchTransactionsRequest(account_prefix=tenant, from_now=True)
    stream = ledger_server.app.ledger.stream

    async def open_streams(n: int) -> None:
        async with asyncio.timeout(5):
            while stream.open_streams("local") != n:
                await asyncio.sleep(0.02)

    await open_streams(0)  # earlier tests' streams are gone
    calls = [stub.WatchTransactions(req) for _ in range(limits.WATCH_STREAMS_PER_CALLER_MAX)]
    try:
        await open_streams(len(calls))
        assert metrics.STREAMS_OPEN._value.get() >= len(calls)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await take(stub, req, 1)
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_info(err.value).reason == "TOO_MANY_STREAMS"
        assert "WATCH_STREAMS_PER_CALLER_MAX" in (err.value.details() or "")
    finally:
        for call in calls:
            call.cancel()
    await open_streams(0)


async def test_bad_requests_name_the_field(stub: LedgerServiceAsyncStub) -> None:
    for req, field in (
        (pb.WatchTransactionsRequest(after_position="12"), "after_position"),
        (pb.WatchTransactionsRequest(after_position="1-2", from_now=True), "from_now"),
        (pb.WatchTransactionsRequest(asset="Not An Asset"), "asset"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await take(stub, req, 1)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert field in error_info(err.value).metadata["fields"]


async def test_a_scoped_caller_sees_its_own_accounts_only(
    stub: LedgerServiceAsyncStub, ledger_server: RunningServer
) -> None:
    run = uuid.uuid4().hex[:8]
    mine = await new_account(stub, f"s{run}-mine", grant=3)
    theirs = await new_account(stub, f"s{run}-theirs", grant=4)
    access = Access("tenant", frozenset({Permission.READ}), (f"s{run}-mine",))
    seen: list[str] = []

    async def consume(messages: AsyncIterator[object]) -> None:
        async for msg in messages:
            for tx in getattr(msg, "transactions", []):
                seen.extend(e.account_id for e in tx.entries)

    watch = ledger_server.app.ledger.stream.watch("", f"s{run}", "", "", False, access)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.5):
            await consume(watch)
    assert seen and set(seen) == {mine}
    assert theirs not in seen


async def test_the_journal_stays_consistent(database_url: str) -> None:
    await assert_ledger_consistent(database_url)


async def test_a_stopping_server_ends_its_streams_so_consumers_resume_elsewhere(
    database_url: str,
) -> None:
    replica = App(
        Config(
            listen="127.0.0.1:0",
            database_url=database_url,
            metrics_listen="127.0.0.1:0",
            sweep_interval_s=60.0,
            drain_s=5.0,
        )
    )
    await replica.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as ch:
        call = ledger_pb2_grpc.LedgerServiceStub(ch).WatchTransactions(
            pb.WatchTransactionsRequest(from_now=True)
        )
        await asyncio.sleep(0.3)
        started = asyncio.get_running_loop().time()
        await replica.stop()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in call:
                pass
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert asyncio.get_running_loop().time() - started < 4.0  # not the whole drain


async def test_small_pages_never_cut_a_transaction(
    stub: LedgerServiceAsyncStub, ledger_server: RunningServer
) -> None:
    """Pages of 3 rows over transactions of up to 6: each arrives whole, once, in order."""
    tenant = f"p{uuid.uuid4().hex[:8]}-"
    accts = [await new_account(stub, tenant + str(i), grant=50) for i in range(3)]
    group = pb.ReserveGroupRequest(idempotency_key=key())
    for i, acct in enumerate(accts):
        group.legs.add(account_id=acct, asset=ASSET, amount=5, leg_key=str(i))
    await stub.ReserveGroup(group)  # one transaction, 6 customer rows
    await stub.Charge(
        pb.ChargeRequest(account_id=accts[0], asset=ASSET, amount=1, idempotency_key=key())
    )
    app = ledger_server.app
    stream = ChangeStream(app.store, ledger_server.clock, WatchSettings(page_rows=3))
    got: list[tuple[str, int]] = []
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(2.0):
            async for msg in stream.watch("", tenant, "", "", False):
                got += [(t.transaction_id, len(t.entries)) for t in msg.transactions]
    await stream.close()
    assert [n for _, n in got] == [1, 1, 1, 6, 1]
    assert len({t for t, _ in got}) == 5


async def test_the_streams_held_connection_killed_loses_nothing(
    stub: LedgerServiceAsyncStub, ledger_server: RunningServer, database_url: str
) -> None:
    """Horizon polls and pages run on one connection the store holds
    (PostgresStore._stream_read). Its backend terminated under a caught-up
    stream: the next poll fails, the store replaces the connection, and the
    stream sends what commits next (nothing skipped, nothing twice)."""
    tenant = f"k{uuid.uuid4().hex[:8]}-"
    acct = await new_account(stub, tenant + "a")
    req = pb.WatchTransactionsRequest(account_prefix=tenant, from_now=True)
    store = ledger_server.app.store
    call = stub.WatchTransactions(req)
    got: list[pb.StreamedTransaction] = []

    async def read() -> None:
        async for msg in call:
            got.extend(msg.transactions)

    reader = asyncio.create_task(read())
    try:
        await stub.Grant(
            pb.GrantRequest(account_id=acct, asset=ASSET, amount=1, idempotency_key=key())
        )
        async with asyncio.timeout(10):
            while len(got) < 1:
                await asyncio.sleep(0.02)
        held = store._stream_conn
        assert held is not None  # the stream's reads went through it
        admin = await asyncpg.connect(database_url)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", held.get_server_pid())
        finally:
            await admin.close()
        for amount in (2, 3):
            await stub.Grant(
                pb.GrantRequest(account_id=acct, asset=ASSET, amount=amount, idempotency_key=key())
            )
        async with asyncio.timeout(10):
            while len(got) < 3:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # nothing more comes (no transaction twice)
        assert [t.balances[0].available for t in got] == [1, 3, 6]
        assert store._stream_conn is not held  # replaced
    finally:
        call.cancel()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await reader


async def test_a_stream_read_on_a_held_connection_that_died_idle_runs_again(
    ledger_server: RunningServer, database_url: str
) -> None:
    """A caught-up stream reads a page every checkpoint_s whether or not the
    horizon moved, so a read can be the first to use the held connection after
    its backend ended. Before asyncpg has seen the end, the read fails on it:
    that must not end the stream (it read nothing and changed nothing), the
    read runs again on a fresh connection. Found as a 1-in-6 flake of the test
    above."""
    store = ledger_server.app.store
    admin = await asyncpg.connect(database_url)
    try:
        for _ in range(20):
            await store.journal_horizon()
            held = store._stream_conn
            assert held is not None
            pid = held.get_server_pid()
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
            # Right away, before the held connection has heard of its end:
            assert await store.journal_horizon() > 0
    finally:
        await admin.close()
