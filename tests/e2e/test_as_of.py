"""GetBalance as of an instant or a stream position (issue 17): the answer a read
at that instant gave, deadlines included, and a replay of the stream up to it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from creditledger.v1.ledger_pb2_grpc import LedgerServiceAsyncStub

import random
import uuid
from datetime import datetime, timedelta

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from google.protobuf import duration_pb2, timestamp_pb2

from tests.conftest import RunningServer, key, new_account
from tests.e2e.test_stream import take
from tests.support.rpc import error_info

pytestmark = pytest.mark.timeout(120)
ASSET = "crm_credits"


def ts(value: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


async def as_of(
    stub: LedgerServiceAsyncStub, acct: str, at: datetime, asset: str = ASSET
) -> pb.Balance:
    reply = await stub.GetBalance(
        pb.GetBalanceRequest(account_id=acct, asset=asset, as_of_time=ts(at))
    )
    return reply.balance


def fields(b: pb.Balance) -> tuple[int, ...]:
    return (b.available, b.reserved, b.granted, b.settled, b.refunded, b.expired)


async def test_as_of_an_instant_and_a_position(
    stub: LedgerServiceAsyncStub, ledger_server: RunningServer
) -> None:
    clock = ledger_server.clock
    acct = await new_account(stub, "asof")
    before = clock.now()
    await stub.Grant(
        pb.GrantRequest(account_id=acct, asset=ASSET, amount=100, idempotency_key=key())
    )
    t1 = clock.now()
    await stub.Charge(
        pb.ChargeRequest(account_id=acct, asset=ASSET, amount=30, idempotency_key=key())
    )
    t2 = clock.now()
    await stub.Reserve(
        pb.ReserveRequest(account_id=acct, asset=ASSET, amount=20, idempotency_key=key())
    )
    t3 = clock.now()
    assert fields(await as_of(stub, acct, before)) == (0, 0, 0, 0, 0, 0)
    assert fields(await as_of(stub, acct, t1)) == (100, 0, 100, 0, 0, 0)
    assert fields(await as_of(stub, acct, t2)) == (70, 0, 100, 30, 0, 0)
    assert fields(await as_of(stub, acct, t3)) == (50, 20, 100, 30, 0, 0)

    streamed = await take(stub, pb.WatchTransactionsRequest(account_id=acct), 3)
    for msg in streamed:
        reply = await stub.GetBalance(
            pb.GetBalanceRequest(account_id=acct, asset=ASSET, as_of_position=msg.position)
        )
        # The journal's amounts (docs/design.md: an as-of answer carries no version or
        # caps, and its spendable is its available).
        assert fields(reply.balance) == fields(msg.balances[0])
        assert reply.balance.spendable == reply.balance.available


async def test_deadlines_count_at_their_own_instant_whether_written_or_not(
    stub: LedgerServiceAsyncStub, ledger_server: RunningServer
) -> None:
    """A hold that expired at E: as of before E it still holds, as of after E it
    gave its credits back, both before anything wrote the expiry down and after
    a later command (or the sweeper) did. The same for a lot's expiry."""
    clock = ledger_server.clock
    acct = await new_account(stub, "asofdue")
    await stub.Grant(
        pb.GrantRequest(account_id=acct, asset=ASSET, amount=100, idempotency_key=key())
    )
    lot_expires = clock.now() + timedelta(seconds=600)
    await stub.Grant(
        pb.GrantRequest(
            account_id=acct,
            asset="email_sends",
            amount=10,
            idempotency_key=key(),
            expires_at=ts(lot_expires),
        )
    )
    res = await stub.Reserve(
        pb.ReserveRequest(
            account_id=acct,
            asset=ASSET,
            amount=40,
            idempotency_key=key(),
            ttl=duration_pb2.Duration(seconds=300),
        )
    )
    expiry = res.reservation.expires_at.ToDatetime().replace(tzinfo=clock.now().tzinfo)
    clock.advance(timedelta(seconds=900))
    early, late = expiry - timedelta(seconds=10), expiry + timedelta(seconds=10)
    lot_early, lot_late = lot_expires - timedelta(seconds=10), lot_expires + timedelta(seconds=10)
    for _ in range(2):  # before anything writes the deadlines down, then after
        assert fields(await as_of(stub, acct, early)) == (60, 40, 100, 0, 0, 0)
        assert fields(await as_of(stub, acct, late)) == (100, 0, 100, 0, 0, 0)
        assert fields(await as_of(stub, acct, lot_early, "email_sends")) == (10, 0, 10, 0, 0, 0)
        assert fields(await as_of(stub, acct, lot_late, "email_sends")) == (0, 0, 10, 0, 0, 10)
        # A command on each pair writes its catch-up first (the sweeper may have already).
        await stub.Charge(
            pb.ChargeRequest(account_id=acct, asset=ASSET, amount=1, idempotency_key=key())
        )
        await stub.Grant(
            pb.GrantRequest(account_id=acct, asset="email_sends", amount=1, idempotency_key=key())
        )
    now = await stub.GetBalance(pb.GetBalanceRequest(account_id=acct, asset=ASSET))
    assert fields(now.balance) == (98, 0, 100, 2, 0, 0)


async def test_as_of_random_instants_equals_a_replay_of_the_stream(
    stub: LedgerServiceAsyncStub, ledger_server: RunningServer
) -> None:
    rng = random.Random(17)
    tenant = f"replay{uuid.uuid4().hex[:6]}-"
    accts = [await new_account(stub, tenant + str(i)) for i in range(2)]
    start = ledger_server.clock.now()
    for acct in accts:
        await stub.Grant(
            pb.GrantRequest(account_id=acct, asset=ASSET, amount=1000, idempotency_key=key())
        )
    held: dict[str, list[str]] = {a: [] for a in accts}
    ops = len(accts)
    for _ in range(60):
        acct = rng.choice(accts)
        roll = rng.random()
        if roll < 0.3:
            await stub.Grant(
                pb.GrantRequest(
                    account_id=acct, asset=ASSET, amount=rng.randint(1, 50), idempotency_key=key()
                )
            )
        elif roll < 0.6:
            r = await stub.Reserve(
                pb.ReserveRequest(account_id=acct, asset=ASSET, amount=1, idempotency_key=key())
            )
            held[acct].append(r.reservation.reservation_id)
        elif held[acct]:
            await stub.Settle(
                pb.SettleRequest(
                    reservation_id=held[acct].pop(), amount=1, final=True, idempotency_key=key()
                )
            )
        else:
            continue
        ops += 1
    end = ledger_server.clock.now()
    streamed = await take(stub, pb.WatchTransactionsRequest(account_prefix=tenant), ops)
    history = [
        (m.commit_time.ToDatetime().replace(tzinfo=start.tzinfo), b)
        for m in streamed
        for b in m.balances
    ]
    span = (end - start).total_seconds()
    for _ in range(1000):  # the 1,000 random instants
        acct = rng.choice(accts)
        at = start + timedelta(seconds=rng.random() * span)
        replayed = [b for t, b in history if b.account_id == acct and t <= at]
        want = fields(replayed[-1]) if replayed else (0, 0, 0, 0, 0, 0)
        assert fields(await as_of(stub, acct, at)) == want, at


async def test_as_of_refusals_name_the_field(
    stub: LedgerServiceAsyncStub, ledger_server: RunningServer
) -> None:
    acct = await new_account(stub, "asofbad")
    future = ledger_server.clock.now() + timedelta(hours=1)
    cases = [
        (pb.GetBalanceRequest(account_id=acct, asset=ASSET, as_of_time=ts(future)), "as_of_time"),
        (pb.GetBalanceRequest(account_id=acct, asset=ASSET, as_of_position="x"), "as_of_position"),
        (
            pb.GetBalanceRequest(
                account_id=acct, asset=ASSET, as_of_position="1-1", include_lots=True
            ),
            "as_of_position",
        ),
    ]
    for req, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetBalance(req)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert field in error_info(err.value).metadata["fields"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetBalance(
            pb.GetBalanceRequest(account_id="nobody-here", asset=ASSET, as_of_position="1-1")
        )
    assert err.value.code() is grpc.StatusCode.NOT_FOUND


async def statement_pages(
    stub: LedgerServiceAsyncStub, req: pb.GetStatementRequest
) -> tuple[pb.GetStatementResponse, list[pb.Entry]]:
    first = await stub.GetStatement(req)
    entries = list(first.entries)
    reply = first
    while reply.next_page_token:
        req.page_token = reply.next_page_token
        reply = await stub.GetStatement(req)
        assert fields(reply.opening) == fields(first.opening)
        entries += reply.entries
    return first, entries


async def test_a_statement_reconciles_deadlines_included(
    stub: LedgerServiceAsyncStub, ledger_server: RunningServer
) -> None:
    clock = ledger_server.clock
    acct = await new_account(stub, "stmt")
    start = clock.now()
    await stub.Grant(
        pb.GrantRequest(account_id=acct, asset=ASSET, amount=100, idempotency_key=key())
    )
    after_grant = clock.now()
    await stub.Charge(
        pb.ChargeRequest(account_id=acct, asset=ASSET, amount=30, idempotency_key=key())
    )
    await stub.Reserve(
        pb.ReserveRequest(
            account_id=acct,
            asset=ASSET,
            amount=20,
            idempotency_key=key(),
            ttl=duration_pb2.Duration(seconds=300),
        )
    )
    clock.advance(timedelta(seconds=400))  # the hold expired; maybe nothing wrote it yet
    end = clock.now()
    req = pb.GetStatementRequest(
        account_id=acct, asset=ASSET, from_time=ts(start), to_time=ts(end), page_size=2
    )
    st, entries = await statement_pages(stub, req)
    assert fields(st.opening) == (0, 0, 0, 0, 0, 0)
    assert fields(st.closing) == (70, 0, 100, 30, 0, 0)
    lines = {m.movement: (m.amount, m.available_change, m.reserved_change) for m in st.movements}
    assert lines == {
        pb.Entry.MOVEMENT_GRANT: (100, 100, 0),
        pb.Entry.MOVEMENT_SETTLE: (30, -30, 0),
        pb.Entry.MOVEMENT_RESERVE: (20, -20, 20),
        pb.Entry.MOVEMENT_RESERVATION_EXPIRY: (20, 20, -20),
    }
    assert len(entries) == sum(m.entry_count for m in st.movements) == 6
    assert sum(e.amount for e in entries if e.bucket == pb.Entry.BUCKET_AVAILABLE) == 70
    assert [e.movement for e in entries][-2:] == [pb.Entry.MOVEMENT_RESERVATION_EXPIRY] * 2

    # A period that starts after the grant opens with it.
    later = await stub.GetStatement(
        pb.GetStatementRequest(
            account_id=acct, asset=ASSET, from_time=ts(after_grant), to_time=ts(end)
        )
    )
    assert fields(later.opening) == (100, 0, 100, 0, 0, 0)
    assert fields(later.closing) == fields(st.closing)
    assert pb.Entry.MOVEMENT_GRANT not in {m.movement for m in later.movements}

    # A page token belongs to its query.
    req.page_token = ""
    first = await stub.GetStatement(req)
    assert first.next_page_token
    other = pb.GetStatementRequest(
        account_id=acct,
        asset=ASSET,
        from_time=ts(after_grant),
        to_time=ts(end),
        page_token=first.next_page_token,
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetStatement(other)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in error_info(err.value).metadata["fields"]
