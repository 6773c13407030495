"""Top-up requests (issue 17): a balance alert's top-up rule asks the caller's
billing for credits at each fall below the threshold, net of the requests
still pending and within a monthly cap; the billing's Grant naming the request
settles it. Once per crossing, in the transaction that crossed, on the stream."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from creditledger.v1.ledger_pb2_grpc import LedgerServiceAsyncStub

import asyncio
import random
import uuid
from collections.abc import Iterator
from datetime import timedelta

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb

from tests.conftest import key, new_account
from tests.e2e.test_stream import take
from tests.support.manual_server import ServerThread
from tests.support.rpc import error_info
from tests.support.verify import assert_ledger_consistent

pytestmark = pytest.mark.timeout(120)
ASSET = "crm_credits"
BELOW = pb.BalanceEvent.KIND_BALANCE_BELOW
RECOVERED = pb.BalanceEvent.KIND_BALANCE_RECOVERED
EXHAUSTED = pb.BalanceEvent.KIND_BALANCE_EXHAUSTED
TOP_UP = pb.BalanceEvent.KIND_TOP_UP_REQUESTED


async def charge(stub: LedgerServiceAsyncStub, acct: str, amount: int) -> None:
    await stub.Charge(
        pb.ChargeRequest(account_id=acct, asset=ASSET, amount=amount, idempotency_key=key())
    )


async def grant(
    stub: LedgerServiceAsyncStub, acct: str, amount: int, request_id: str = "", k: str = ""
) -> pb.GrantResponse:
    reply: pb.GrantResponse = await stub.Grant(
        pb.GrantRequest(
            account_id=acct,
            asset=ASSET,
            amount=amount,
            idempotency_key=k or key(),
            top_up_request_id=request_id,
        )
    )
    return reply


async def events_of(
    stub: LedgerServiceAsyncStub, acct: str, transactions: int
) -> list[tuple[int, int, int]]:
    """(kind, available, amount) of every event of the account's first transactions."""
    got = await take(stub, pb.WatchTransactionsRequest(account_id=acct), transactions)
    return [(e.kind, e.available, e.amount) for m in got for e in m.events]


async def requests_of(stub: LedgerServiceAsyncStub, acct: str, transactions: int) -> list[str]:
    got = await take(stub, pb.WatchTransactionsRequest(account_id=acct), transactions)
    return [e.request_id for m in got for e in m.events if e.kind == TOP_UP]


async def alert_of(stub: LedgerServiceAsyncStub, acct: str) -> pb.BalanceAlert:
    listed = await stub.ListBalanceAlerts(pb.ListBalanceAlertsRequest(account_id=acct))
    (alert,) = listed.alerts
    return alert


async def refused(stub: LedgerServiceAsyncStub, req: pb.GrantRequest) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Grant(req)
    return err.value


async def test_a_fall_below_requests_the_gap_net_of_pending_and_a_grant_settles_it(
    stub: LedgerServiceAsyncStub, database_url: str
) -> None:
    acct = await new_account(stub, "topup", grant=1000)
    reply = await stub.SetBalanceAlert(
        pb.SetBalanceAlertRequest(
            account_id=acct, asset=ASSET, threshold=200, recovery=300, top_up_target=1000
        )
    )
    assert (reply.alert.top_up_target, reply.alert.top_up_pending) == (1000, 0)
    await charge(stub, acct, 850)  # 150: below; asks for 1000 - 150
    assert (await alert_of(stub, acct)).top_up_pending == 850
    await grant(stub, acct, 200)  # 350: recovered by another grant; the request stays pending
    await charge(stub, acct, 250)  # 100: below again; 1000 - 100 - 850 pending = 50
    first, second = await requests_of(stub, acct, 4)
    alert = await alert_of(stub, acct)
    assert (alert.top_up_pending, alert.top_up_requested_this_month) == (900, 900)

    settle_key = key()
    settled = await grant(stub, acct, 850, first, settle_key)  # the billing charged, and pays
    assert settled.balance.available == 950
    assert (await alert_of(stub, acct)).top_up_pending == 50
    replay = await grant(stub, acct, 850, first, settle_key)  # its retry replays
    assert replay.lot.lot_id == settled.lot.lot_id
    assert (await alert_of(stub, acct)).top_up_pending == 50

    # A second Grant for a settled request is refused (and nothing is granted),
    # as are a request of another account, a request never made and a bad id.
    other = await new_account(stub, "topupother", grant=10)
    for req_id, acct_id in ((first, acct), (second, other), (str(uuid.uuid4()), acct)):
        err = await refused(
            stub,
            pb.GrantRequest(
                account_id=acct_id,
                asset=ASSET,
                amount=850,
                idempotency_key=key(),
                top_up_request_id=req_id,
            ),
        )
        assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
        info = error_info(err)
        assert info.reason == "TOP_UP_REQUEST_NOT_PENDING"
        assert info.metadata["top_up_request_id"] == req_id
    err = await refused(
        stub,
        pb.GrantRequest(
            account_id=acct,
            asset=ASSET,
            amount=1,
            idempotency_key=key(),
            top_up_request_id="not-a-request",
        ),
    )
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "top_up_request_id" in error_info(err).metadata["fields"]
    balance = await stub.GetBalance(pb.GetBalanceRequest(account_id=acct, asset=ASSET))
    assert balance.balance.available == 950

    await grant(stub, acct, 50, second)
    assert (await alert_of(stub, acct)).top_up_pending == 0
    assert await events_of(stub, acct, 6) == [
        (BELOW, 150, 0),
        (TOP_UP, 150, 850),
        (RECOVERED, 350, 0),
        (BELOW, 100, 0),
        (TOP_UP, 100, 50),
        (RECOVERED, 950, 0),
    ]
    await assert_ledger_consistent(database_url)


@pytest.fixture
def manual(database_url: str) -> Iterator[ServerThread]:
    """A server of its own whose clock starts at 2030-01-01 and moves when told."""
    s = ServerThread(database_url)
    yield s
    s.close()


def _take(s: ServerThread, acct: str, n: int) -> list[pb.StreamedTransaction]:
    out: list[pb.StreamedTransaction] = []
    call = s.stub.WatchTransactions(pb.WatchTransactionsRequest(account_id=acct), timeout=10)
    try:
        for msg in call:
            out.extend(msg.transactions)
            if len(out) >= n:
                break
    finally:
        call.cancel()
    return out[:n]


def test_the_monthly_cap_counts_calendar_months(manual: ServerThread) -> None:
    s = manual
    acct = f"topupcap-{uuid.uuid4().hex[:10]}"
    s.stub.CreateAccount(pb.CreateAccountRequest(account_id=acct))

    def move(amount: int, request_id: str = "") -> None:
        if amount > 0:
            s.stub.Grant(
                pb.GrantRequest(
                    account_id=acct,
                    asset=ASSET,
                    amount=amount,
                    idempotency_key=key(),
                    top_up_request_id=request_id,
                )
            )
        else:
            s.stub.Charge(
                pb.ChargeRequest(
                    account_id=acct, asset=ASSET, amount=-amount, idempotency_key=key()
                )
            )

    def alert() -> pb.BalanceAlert:
        (found,) = s.stub.ListBalanceAlerts(pb.ListBalanceAlertsRequest(account_id=acct)).alerts
        return found

    move(1000)
    s.stub.SetBalanceAlert(
        pb.SetBalanceAlertRequest(
            account_id=acct,
            asset=ASSET,
            threshold=200,
            top_up_target=1000,
            top_up_monthly_cap=900,
        )
    )
    s.advance(timedelta(days=30, hours=23))  # 2030-01-31 23:00 UTC
    move(-950)  # 50: asks for 950; the month's cap leaves 900
    (first,) = [e.request_id for t in _take(s, acct, 2) for e in t.events if e.kind == TOP_UP]
    move(900, first)  # 950: recovered
    move(-800)  # 150: below, but January's cap is spent
    assert (alert().top_up_pending, alert().top_up_requested_this_month) == (0, 900)
    s.advance(timedelta(hours=1))  # 2030-02-01 00:00 UTC: a new calendar month
    assert alert().top_up_requested_this_month == 0
    move(100)  # 250: recovered
    move(-100)  # 150: below; 850 asked, within February's 900
    assert [(e.kind, e.available, e.amount) for t in _take(s, acct, 6) for e in t.events] == [
        (BELOW, 50, 0),
        (TOP_UP, 50, 900),
        (RECOVERED, 950, 0),
        (BELOW, 150, 0),
        (RECOVERED, 250, 0),
        (BELOW, 150, 0),
        (TOP_UP, 150, 850),
    ]
    assert (alert().top_up_pending, alert().top_up_requested_this_month) == (850, 850)


async def test_set_keeps_pending_requests_and_validates_the_rule(
    stub: LedgerServiceAsyncStub,
) -> None:
    acct = await new_account(stub, "topupset", grant=100)
    await stub.SetBalanceAlert(
        pb.SetBalanceAlertRequest(account_id=acct, asset=ASSET, threshold=50, top_up_target=100)
    )
    await charge(stub, acct, 70)  # 30: asks for 70
    (request,) = await requests_of(stub, acct, 2)
    replaced = await stub.SetBalanceAlert(
        pb.SetBalanceAlertRequest(account_id=acct, asset=ASSET, threshold=20)  # no rule now
    )
    assert (replaced.alert.top_up_target, replaced.alert.top_up_pending) == (0, 70)
    await grant(stub, acct, 70, request)  # still settles
    assert (await alert_of(stub, acct)).top_up_pending == 0
    for req, field in (
        (
            pb.SetBalanceAlertRequest(account_id=acct, asset=ASSET, top_up_target=-1),
            "top_up_target",
        ),
        (
            pb.SetBalanceAlertRequest(account_id=acct, asset=ASSET, top_up_monthly_cap=5),
            "top_up_monthly_cap",
        ),
        (
            pb.SetBalanceAlertRequest(
                account_id=acct, asset=ASSET, top_up_target=10, top_up_monthly_cap=10**16
            ),
            "top_up_monthly_cap",
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SetBalanceAlert(req)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert field in error_info(err.value).metadata["fields"]


def expected(
    txs: list[pb.StreamedTransaction],
    payments: dict[str, str],
    levels: tuple[int, int, int],
) -> list[tuple[int, int, int]]:
    """An independent model over the stream: a transaction whose key is a payment's
    (`payments`: key -> request id) settles that request, then each transaction's
    resulting available moves the alert; each fall below requests
    target - available - pending when that is positive."""
    threshold, recovery, target = levels
    state, pending, out = "above", dict[str, int](), list[tuple[int, int, int]]()
    for t in txs:
        if t.idempotency_key in payments:
            del pending[payments[t.idempotency_key]]
        available = t.balances[0].available
        if state == "above" and available < threshold:
            state = "below"
            out.append((BELOW, available, 0))
            amount = target - available - sum(pending.values())
            if amount > 0:
                (request_id,) = [e.request_id for e in t.events if e.kind == TOP_UP]
                pending[request_id] = amount
                out.append((TOP_UP, available, amount))
        if state == "below" and available == 0 and threshold > 0:
            state = "exhausted"
            out.append((EXHAUSTED, available, 0))
        if state != "above" and available >= recovery:
            state = "above"
            out.append((RECOVERED, available, 0))
        if state == "exhausted" and available > 0:
            state = "below"
    return out


async def test_32_concurrent_spenders_and_a_billing_one_request_per_crossing(
    stub: LedgerServiceAsyncStub, database_url: str
) -> None:
    """32 spenders charge and grant around the threshold while a billing task
    follows the stream and pays each request (twice, concurrently, under two
    keys: exactly one of the two settles it). The streamed events equal the
    model run over the stream's own per-transaction balances."""
    acct = await new_account(stub, "topuprace", grant=520)
    await stub.SetBalanceAlert(
        pb.SetBalanceAlertRequest(
            account_id=acct, asset=ASSET, threshold=500, recovery=540, top_up_target=600
        )
    )
    rng = random.Random(32)
    done = 0
    settled: list[str] = []
    refusals = 0
    payments: dict[str, str] = {}  # idempotency key -> the request it pays
    wake = key()

    async def spender(seed: int) -> None:
        nonlocal done
        r = random.Random(seed)
        for _ in range(12):
            await asyncio.sleep(r.uniform(0.05, 0.3))  # paced: the billing pays meanwhile
            try:  # a slow drift down: falls below, is paid back above recovery, falls again
                if r.random() < 0.5:
                    await charge(stub, acct, r.randint(1, 20))
                else:
                    await grant(stub, acct, r.randint(1, 16))
                done += 1
            except grpc.aio.AioRpcError as exc:
                assert error_info(exc).reason == "INSUFFICIENT_CREDITS"

    async def pay(request_id: str, amount: int) -> None:
        nonlocal refusals
        k = key()
        payments[k] = request_id
        try:
            await grant(stub, acct, amount, request_id, k)
            settled.append(request_id)
        except grpc.aio.AioRpcError as exc:
            assert error_info(exc).reason == "TOP_UP_REQUEST_NOT_PENDING"
            refusals += 1

    async def billing() -> None:
        """Pays each request for its amount, twice at once under two keys; stops at
        the `wake` Grant, which commits after every spender's transaction."""
        tasks: list[asyncio.Task[None]] = []
        call = stub.WatchTransactions(pb.WatchTransactionsRequest(account_id=acct))
        try:
            async for msg in call:
                for t in msg.transactions:
                    for e in t.events:
                        if e.kind == TOP_UP:
                            for _ in range(2):
                                tasks.append(asyncio.create_task(pay(e.request_id, e.amount)))
                if any(t.idempotency_key == wake for t in msg.transactions):
                    break
        finally:
            call.cancel()
        await asyncio.gather(*tasks)

    payer = asyncio.create_task(billing())
    await asyncio.gather(*(spender(rng.randrange(2**32)) for _ in range(32)))
    await grant(stub, acct, 1, k=wake)
    await payer
    total = 1 + done + len(settled) + 1
    got = await take(stub, pb.WatchTransactionsRequest(account_id=acct), total, 30.0)
    assert len(got) == total
    streamed = [(e.kind, e.available, e.amount) for m in got for e in m.events]
    assert streamed == expected(got, payments, (500, 540, 600))
    requests = [e.request_id for m in got for e in m.events if e.kind == TOP_UP]
    assert len(requests) >= 2, "the workload crossed and requested more than once"
    assert len(set(requests)) == len(requests)
    assert sorted(settled) == sorted(requests), "each request settled exactly once"
    assert refusals == len(requests), "each second payment refused"
    assert (await alert_of(stub, acct)).top_up_pending == 0
    await assert_ledger_consistent(database_url)
