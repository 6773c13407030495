"""Expiring lots spent in order, and one all-or-nothing hold across several kinds of credit."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from creditledger.v1.ledger_pb2_grpc import LedgerServiceAsyncStub

import asyncio
from datetime import datetime, timedelta

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from google.protobuf import duration_pb2, timestamp_pb2

from tests.conftest import RunningServer, key, new_account
from tests.support.rpc import error_info
from tests.support.verify import assert_ledger_consistent


def ts(value: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


async def grant(
    stub: LedgerServiceAsyncStub,
    acct: str,
    amount: int,
    *,
    expires_at: datetime | None = None,
    priority: int | None = None,
    source: str = "purchase",
    asset: str = "crm_credits",
) -> pb.GrantResponse:
    req = pb.GrantRequest(
        account_id=acct, asset=asset, amount=amount, idempotency_key=key(), source=source
    )
    if expires_at is not None:
        req.expires_at.CopyFrom(ts(expires_at))
    if priority is not None:
        req.priority = priority
    resp: pb.GrantResponse = await stub.Grant(req)
    return resp


async def lots_of(stub: LedgerServiceAsyncStub, acct: str) -> dict[str, int]:
    got = await stub.GetBalance(
        pb.GetBalanceRequest(account_id=acct, asset="crm_credits", include_lots=True)
    )
    return {lot.source: lot.remaining for lot in got.lots}


async def wait_until(predicate: object, timeout_s: float = 6.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await predicate():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not true within {timeout_s} s")
        await asyncio.sleep(0.05)


async def test_monthly_allowance_is_spent_first_and_written_off_at_month_end(
    stub: LedgerServiceAsyncStub, ledger_server: RunningServer, database_url: str
) -> None:
    now = ledger_server.clock.now()
    month_end = now + timedelta(days=20)
    acct = await new_account(stub, "crm-old-plan")
    await grant(stub, acct, 1000, source="purchase")
    await grant(stub, acct, 300, expires_at=month_end, priority=10, source="monthly_allowance")
    for _ in range(5):
        await stub.Charge(
            pb.ChargeRequest(account_id=acct, asset="crm_credits", amount=50, idempotency_key=key())
        )
    assert await lots_of(stub, acct) == {
        "monthly_allowance": 50,
        "purchase": 1000,
    }  # purchased untouched
    r = await stub.Reserve(
        pb.ReserveRequest(account_id=acct, asset="crm_credits", amount=80, idempotency_key=key())
    )
    assert await lots_of(stub, acct) == {
        "purchase": 970
    }  # the allowance first, then purchased credits
    await stub.Release(
        pb.ReleaseRequest(reservation_id=r.reservation.reservation_id, idempotency_key=key())
    )
    assert await lots_of(stub, acct) == {"monthly_allowance": 50, "purchase": 1000}
    expiring = await stub.GetBalance(
        pb.GetBalanceRequest(
            account_id=acct,
            asset="crm_credits",
            expiring_within=duration_pb2.Duration(seconds=30 * 86400),
        )
    )
    assert expiring.expiring_amount == 50
    ledger_server.clock.advance(timedelta(days=21))  # the month ends

    bal = await stub.GetBalance(pb.GetBalanceRequest(account_id=acct, asset="crm_credits"))
    assert (bal.balance.expired, bal.balance.available) == (50, 1000)  # reads see it at once

    async def written_off() -> bool:  # and the sweeper writes it off within 5 s
        entries = await stub.ListEntries(pb.ListEntriesRequest(account_id=acct, page_size=1))
        newest = entries.entries[0]
        return newest.movement == pb.Entry.MOVEMENT_LOT_EXPIRY and newest.amount == -50

    await wait_until(written_off, timeout_s=5.0)
    await assert_ledger_consistent(database_url)


async def test_spend_order_priority_then_soonest_expiry_then_oldest(
    stub: LedgerServiceAsyncStub, ledger_server: RunningServer
) -> None:
    now = ledger_server.clock.now()
    acct = await new_account(stub, "order")
    await grant(stub, acct, 10, source="old_never")
    await grant(stub, acct, 10, source="new_never")
    await grant(stub, acct, 10, source="late", expires_at=now + timedelta(days=9))
    await grant(stub, acct, 10, source="soon", expires_at=now + timedelta(days=2))
    await grant(stub, acct, 10, source="promo", priority=50, expires_at=now + timedelta(days=30))
    got = await stub.GetBalance(
        pb.GetBalanceRequest(account_id=acct, asset="crm_credits", include_lots=True)
    )
    assert [lot.source for lot in got.lots] == ["promo", "soon", "late", "old_never", "new_never"]
    await stub.Charge(
        pb.ChargeRequest(account_id=acct, asset="crm_credits", amount=35, idempotency_key=key())
    )
    assert await lots_of(stub, acct) == {"old_never": 5, "new_never": 10}
    entries = await stub.ListEntries(pb.ListEntriesRequest(account_id=acct, page_size=4))
    assert {e.lot_id for e in entries.entries if e.movement == pb.Entry.MOVEMENT_SETTLE} == {
        lot.lot_id for lot in got.lots if lot.source in ("promo", "soon", "late", "old_never")
    }


async def test_release_after_lot_expired_writes_off_never_revives(
    stub: LedgerServiceAsyncStub, ledger_server: RunningServer, database_url: str
) -> None:
    now = ledger_server.clock.now()
    acct = await new_account(stub, "revive")
    await grant(stub, acct, 10, expires_at=now + timedelta(minutes=10), source="promo")
    r = await stub.Reserve(
        pb.ReserveRequest(
            account_id=acct,
            asset="crm_credits",
            amount=8,
            idempotency_key=key(),
            ttl=duration_pb2.Duration(seconds=3600),
        )
    )
    ledger_server.clock.advance(timedelta(minutes=11))
    rel = await stub.Release(
        pb.ReleaseRequest(reservation_id=r.reservation.reservation_id, idempotency_key=key())
    )
    assert rel.balance.available <= 2 and rel.balance.reserved == 0
    bal = await stub.GetBalance(pb.GetBalanceRequest(account_id=acct, asset="crm_credits"))
    assert (bal.balance.available, bal.balance.expired) == (0, 10)
    await assert_ledger_consistent(database_url)


async def test_refund_into_expired_lot_gets_a_grace_lot(
    stub: LedgerServiceAsyncStub, ledger_server: RunningServer, database_url: str
) -> None:
    now = ledger_server.clock.now()
    acct = await new_account(stub, "grace")
    await grant(stub, acct, 10, expires_at=now + timedelta(minutes=10), source="promo")
    c = await stub.Charge(
        pb.ChargeRequest(account_id=acct, asset="crm_credits", amount=4, idempotency_key=key())
    )
    ledger_server.clock.advance(timedelta(minutes=11))
    ref = await stub.Refund(
        pb.RefundRequest(
            reservation_id=c.reservation.reservation_id,
            amount=4,
            idempotency_key=key(),
            reason="wrongly charged",
        )
    )
    assert ref.balance.available == 4
    got = await stub.GetBalance(
        pb.GetBalanceRequest(account_id=acct, asset="crm_credits", include_lots=True)
    )
    (lot,) = got.lots
    assert (lot.source, lot.remaining) == ("refund", 4)
    life = lot.expires_at.ToDatetime() - lot.created_at.ToDatetime()
    assert life == timedelta(days=7)
    await assert_ledger_consistent(database_url)


async def test_charge_racing_lot_expiry_never_spends_expired_credits(
    stub: LedgerServiceAsyncStub, ledger_server: RunningServer, database_url: str
) -> None:
    now = ledger_server.clock.now()
    acct = await new_account(stub, "race")
    await grant(stub, acct, 50, expires_at=now + timedelta(seconds=2), source="flash")

    async def charge() -> str:
        try:
            await stub.Charge(
                pb.ChargeRequest(
                    account_id=acct, asset="crm_credits", amount=1, idempotency_key=key()
                )
            )
            return "ok"
        except grpc.aio.AioRpcError as err:
            return str(error_info(err).reason)

    outcomes: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 4.0
    while loop.time() < deadline and outcomes.count("ok") < 50:
        outcomes += await asyncio.gather(*(charge() for _ in range(4)))
        await asyncio.sleep(0.1)
    assert set(outcomes) <= {"ok", "INSUFFICIENT_CREDITS"}
    assert "INSUFFICIENT_CREDITS" in outcomes  # the lot expired before it was used up
    bal = await stub.GetBalance(pb.GetBalanceRequest(account_id=acct, asset="crm_credits"))
    assert bal.balance.settled == outcomes.count("ok")
    assert bal.balance.settled + bal.balance.expired == 50
    await assert_ledger_consistent(database_url)  # includes nothing_spent_from_expired_lots


async def test_reserve_group_holds_all_legs_across_accounts_and_assets(
    stub: LedgerServiceAsyncStub,
) -> None:
    pool = await new_account(stub, "tenant-pool", grant=6000)
    cust = await new_account(stub, "customer")
    await grant(stub, cust, 1200, asset="sms_credits")
    resp = await stub.ReserveGroup(
        pb.ReserveGroupRequest(
            legs=[
                pb.ReserveGroupLeg(
                    account_id=pool, asset="crm_credits", amount=3000, leg_key="executions"
                ),
                pb.ReserveGroupLeg(
                    account_id=pool, asset="crm_credits", amount=3000, leg_key="emails"
                ),
                pb.ReserveGroupLeg(
                    account_id=cust, asset="sms_credits", amount=1200, leg_key="sms"
                ),
            ],
            idempotency_key=key(),
            ttl=duration_pb2.Duration(seconds=600),
        )
    )
    legs = {r.leg_key: r for r in resp.group.reservations}
    assert set(legs) == {"executions", "emails", "sms"}
    assert all(
        r.group_id == resp.group.group_id and r.state == pb.Reservation.STATE_OPEN
        for r in legs.values()
    )
    # Each leg lives on its own.
    await stub.Settle(
        pb.SettleRequest(
            reservation_id=legs["executions"].reservation_id,
            amount=3000,
            final=True,
            idempotency_key=key(),
        )
    )
    await stub.Settle(
        pb.SettleRequest(
            reservation_id=legs["emails"].reservation_id,
            amount=2000,
            final=True,
            idempotency_key=key(),
        )
    )
    got = await stub.GetReservationGroup(
        pb.GetReservationGroupRequest(group_id=resp.group.group_id)
    )
    states = {r.leg_key: (r.state, r.settled) for r in got.group.reservations}
    assert states == {
        "executions": (pb.Reservation.STATE_CLOSED, 3000),
        "emails": (pb.Reservation.STATE_CLOSED, 2000),
        "sms": (pb.Reservation.STATE_OPEN, 0),
    }
    bal = await stub.GetBalance(pb.GetBalanceRequest(account_id=pool, asset="crm_credits"))
    assert bal.balance.available == 1000


async def test_reserve_group_last_leg_fails_nothing_held(
    stub: LedgerServiceAsyncStub, database_url: str
) -> None:
    pool = await new_account(stub, "tenant-pool", grant=6000)
    cust = await new_account(stub, "customer")
    await grant(stub, cust, 1199, asset="sms_credits")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ReserveGroup(
            pb.ReserveGroupRequest(
                legs=[
                    pb.ReserveGroupLeg(
                        account_id=pool, asset="crm_credits", amount=3000, leg_key="executions"
                    ),
                    pb.ReserveGroupLeg(
                        account_id=pool, asset="crm_credits", amount=3000, leg_key="emails"
                    ),
                    pb.ReserveGroupLeg(
                        account_id=cust, asset="sms_credits", amount=1200, leg_key="sms"
                    ),
                ],
                idempotency_key=key(),
            )
        )
    info = error_info(err.value)
    assert (info.reason, info.metadata["leg_key"], info.metadata["available"]) == (
        "INSUFFICIENT_CREDITS",
        "sms",
        "1199",
    )
    for acct, asset, available in ((pool, "crm_credits", 6000), (cust, "sms_credits", 1199)):
        bal = await stub.GetBalance(pb.GetBalanceRequest(account_id=acct, asset=asset))
        assert (bal.balance.available, bal.balance.reserved) == (available, 0)
    await assert_ledger_consistent(database_url)


async def test_reserve_group_leg_limit_is_named(stub: LedgerServiceAsyncStub) -> None:
    acct = await new_account(stub, grant=1000)
    legs = [
        pb.ReserveGroupLeg(account_id=acct, asset="crm_credits", amount=1, leg_key=f"l{i}")
        for i in range(101)
    ]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ReserveGroup(pb.ReserveGroupRequest(legs=legs, idempotency_key=key()))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "GROUP_LEGS_MAX" in (err.value.details() or "")
    ok = await stub.ReserveGroup(pb.ReserveGroupRequest(legs=legs[:100], idempotency_key=key()))
    assert len(ok.group.reservations) == 100


async def test_grant_expiry_in_the_past_is_invalid(
    stub: LedgerServiceAsyncStub, ledger_server: RunningServer
) -> None:
    acct = await new_account(stub)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await grant(stub, acct, 5, expires_at=ledger_server.clock.now() - timedelta(seconds=1))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expires_at" in (err.value.details() or "")
