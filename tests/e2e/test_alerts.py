"""Low-balance alerts: once per crossing, in the transaction that crossed, on the stream."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from creditledger.v1.ledger_pb2_grpc import LedgerServiceAsyncStub

import asyncio
import random
from typing import Any

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb

from tests.conftest import key, new_account
from tests.e2e.test_stream import take
from tests.support.rpc import error_info
from tests.support.verify import assert_ledger_consistent

pytestmark = pytest.mark.timeout(120)
ASSET = "crm_credits"
BELOW = pb.BalanceEvent.KIND_BALANCE_BELOW
RECOVERED = pb.BalanceEvent.KIND_BALANCE_RECOVERED
EXHAUSTED = pb.BalanceEvent.KIND_BALANCE_EXHAUSTED


async def charge(stub: LedgerServiceAsyncStub, acct: str, amount: int) -> None:
    await stub.Charge(
        pb.ChargeRequest(account_id=acct, asset=ASSET, amount=amount, idempotency_key=key())
    )


async def grant(stub: LedgerServiceAsyncStub, acct: str, amount: int) -> None:
    await stub.Grant(
        pb.GrantRequest(account_id=acct, asset=ASSET, amount=amount, idempotency_key=key())
    )


async def events_of(
    stub: LedgerServiceAsyncStub, acct: str, transactions: int
) -> list[tuple[int, int]]:
    got = await take(stub, pb.WatchTransactionsRequest(account_id=acct), transactions)
    return [(e.kind, e.available) for m in got for e in m.events]


async def test_an_alert_fires_once_per_crossing_with_a_recovery_level(
    stub: LedgerServiceAsyncStub,
) -> None:
    acct = await new_account(stub, "alert", grant=100)
    set_reply = await stub.SetBalanceAlert(
        pb.SetBalanceAlertRequest(account_id=acct, asset=ASSET, threshold=50, recovery=80)
    )
    assert set_reply.alert.state == pb.BalanceAlert.STATE_ABOVE
    for op, amount in [
        (charge, 30),  # 70
        (charge, 25),  # 45: below
        (charge, 5),  # 40
        (grant, 20),  # 60: between the levels, nothing
        (charge, 15),  # 45: still below, nothing
        (grant, 45),  # 90: recovered
        (charge, 90),  # 0 (one transaction over three lots): below and exhausted
        (grant, 5),  # 5
        (charge, 5),  # 0: exhausted again (it had left 0)
    ]:
        await op(stub, acct, amount)
    assert await events_of(stub, acct, 10) == [
        (BELOW, 45),
        (RECOVERED, 90),
        (BELOW, 0),
        (EXHAUSTED, 0),
        (EXHAUSTED, 0),
    ]
    listed = await stub.ListBalanceAlerts(pb.ListBalanceAlertsRequest(account_id=acct))
    assert [(a.asset, a.state, a.threshold_amount) for a in listed.alerts] == [
        (ASSET, pb.BalanceAlert.STATE_EXHAUSTED, 50)
    ]
    deleted = await stub.DeleteBalanceAlert(
        pb.DeleteBalanceAlertRequest(account_id=acct, asset=ASSET)
    )
    assert deleted.deleted
    await grant(stub, acct, 100)
    assert len(await events_of(stub, acct, 11)) == 5  # no alert, no event


async def test_a_percentage_follows_the_last_grant(stub: LedgerServiceAsyncStub) -> None:
    acct = await new_account(stub, "alertpct", grant=1000)
    reply = await stub.SetBalanceAlert(
        pb.SetBalanceAlertRequest(
            account_id=acct, asset=ASSET, threshold=10, recovery=20, percent=True
        )
    )
    assert (reply.alert.threshold_amount, reply.alert.recovery_amount) == (100, 200)
    await charge(stub, acct, 950)  # 50 < 10% of 1000
    await grant(stub, acct, 500)  # 550; the levels are now 50 and 100
    assert await events_of(stub, acct, 3) == [(BELOW, 50), (RECOVERED, 550)]


async def test_alert_refusals(stub: LedgerServiceAsyncStub) -> None:
    acct = await new_account(stub, "alertbad")
    for req, field in (
        (pb.SetBalanceAlertRequest(account_id=acct, asset=ASSET, threshold=-1), "threshold"),
        (
            pb.SetBalanceAlertRequest(account_id=acct, asset=ASSET, threshold=10, recovery=5),
            "recovery",
        ),
        (
            pb.SetBalanceAlertRequest(account_id=acct, asset=ASSET, threshold=101, percent=True),
            "threshold",
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SetBalanceAlert(req)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert field in error_info(err.value).metadata["fields"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SetBalanceAlert(
            pb.SetBalanceAlertRequest(account_id="nobody-alert", asset=ASSET, threshold=1)
        )
    assert err.value.code() is grpc.StatusCode.NOT_FOUND


def expected_events(availables: list[int], threshold: int, recovery: int) -> list[tuple[Any, int]]:
    """An independent model: each transaction's resulting available, in order, against the levels."""
    state, out = "above", list[tuple[Any, int]]()
    for available in availables:
        if state == "above" and available < threshold:
            state = "below"
            out.append((BELOW, available))
        if state == "below" and available == 0 and threshold > 0:
            state = "exhausted"
            out.append((EXHAUSTED, available))
        if state != "above" and available >= recovery:
            state = "above"
            out.append((RECOVERED, available))
        if state == "exhausted" and available > 0:
            state = "below"
    return out


async def test_64_concurrent_spenders_around_the_threshold_fire_once_per_crossing(
    stub: LedgerServiceAsyncStub, database_url: str
) -> None:
    acct = await new_account(stub, "alertrace", grant=520)
    await stub.SetBalanceAlert(
        pb.SetBalanceAlertRequest(account_id=acct, asset=ASSET, threshold=500, recovery=560)
    )
    rng = random.Random(64)
    done = 0

    async def spender(seed: int) -> None:
        nonlocal done
        r = random.Random(seed)
        for _ in range(6):
            try:
                if r.random() < 0.5:
                    await charge(stub, acct, r.randint(1, 30))
                else:
                    await grant(stub, acct, r.randint(1, 30))
                done += 1
            except grpc.aio.AioRpcError as exc:
                assert error_info(exc).reason == "INSUFFICIENT_CREDITS"

    await asyncio.gather(*(spender(rng.randrange(2**32)) for _ in range(64)))
    got = await take(stub, pb.WatchTransactionsRequest(account_id=acct), 1 + done, 30.0)
    availables = [m.balances[0].available for m in got]
    streamed = [(e.kind, e.available) for m in got for e in m.events]
    assert streamed == expected_events(availables, 500, 560)
    assert len(streamed) >= 2  # the workload did cross
    await assert_ledger_consistent(database_url)
