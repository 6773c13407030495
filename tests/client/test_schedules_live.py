"""The Python clients against the real server: spending policies, VoidGrant,
grant schedules and breakage, through their typed methods."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from creditledger_client import (
    AmountExceedsUnspent,
    CapExceeded,
    CapWindow,
    Comparison,
    LedgerClient,
    LotNotFound,
    Operator,
    Overage,
    PeriodUnit,
    Precondition,
    PreconditionFailed,
    Rollover,
    ScheduleNotFound,
    ScheduleState,
    SyncLedgerClient,
)
from creditledger_client import batch as commands

from tests.conftest import RunningServer

ASSET = "crm_credits"


async def account(client: LedgerClient, prefix: str, parent_id: str = "") -> str:
    account_id = f"{prefix}-{uuid.uuid4().hex[:10]}"
    created = await client.create_account(account_id, parent_id=parent_id)
    assert created.parent_id == parent_id
    return account_id


@pytest.mark.timeout(60)
async def test_limits_caps_preconditions_and_overage(ledger_server: RunningServer) -> None:
    async with LedgerClient(ledger_server.target) as client:
        pool = await account(client, "pool")
        granted = await client.grant(pool, ASSET, 100)
        version = granted.balance.version
        key = uuid.uuid4().hex
        limits = await client.set_spending_limits(pool, ASSET, -20, idempotency_key=key)
        assert (limits.balance.floor, limits.replayed) == (-20, False)
        again = await client.set_spending_limits(pool, ASSET, -20, idempotency_key=key)
        assert again.replayed and again.balance == limits.balance
        with pytest.raises(PreconditionFailed) as stale:
            await client.charge(pool, ASSET, 1, preconditions=[Precondition(version=version)])
        assert stale.value.version == limits.balance.version
        fresh = await client.charge(
            pool,
            ASSET,
            110,
            overage=Overage.DEBT,
            preconditions=[
                Precondition(version=limits.balance.version, available=Comparison(Operator.GE, 100))
            ],
        )
        assert (fresh.taken, fresh.balance.debt, fresh.balance.spendable) == (110, 10, 10)

        member = await account(client, "member", parent_id=pool)
        await client.grant(pool, ASSET, 60)  # repays the 10 of debt, 50 left to spend
        capped = await client.set_member_cap(member, ASSET, CapWindow.DAY, 30)
        assert capped.balance.cap_day == 30
        view = await client.get_balance(member, ASSET)
        assert view.funded_by == pool and view.may_spend == 30
        assert [(c.window, c.cap, c.remaining) for c in view.caps] == [(CapWindow.DAY, 30, 30)]
        with pytest.raises(CapExceeded):
            await client.charge(member, ASSET, 31)
        partial = await client.reserve(member, ASSET, 31, overage=Overage.CAP)
        assert partial.taken == 30 and partial.reservation.member_id == member
        removed = await client.set_member_cap(member, ASSET, CapWindow.DAY, None)
        assert removed.balance.cap_day is None

        outcomes = await client.submit_batch(
            [
                commands.charge(pool, ASSET, 1_000, overage=Overage.CAP),
                commands.grant(pool, ASSET, 5, category="promotional"),
                commands.charge(pool, ASSET, 1, preconditions=[Precondition(version=0)]),
            ]
        )
        assert outcomes[0].ok and outcomes[1].ok
        assert isinstance(outcomes[2].error, PreconditionFailed)


@pytest.mark.timeout(60)
async def test_void_grant_schedules_and_breakage(ledger_server: RunningServer) -> None:
    async with LedgerClient(ledger_server.target) as client:
        acct = await account(client, "sched")
        lot = (
            await client.grant(
                acct,
                ASSET,
                100,
                category="promotional",
                unit_cost_micros=2_000,
                cost_currency="USD",
            )
        ).lot
        assert (lot.category, lot.unit_cost_micros, lot.cost_currency) == (
            "promotional",
            2_000,
            "USD",
        )
        voided = await client.void_grant(lot.lot_id, 40, reason="goodwill expired")
        assert (voided.voided, voided.balance.available, voided.lot.remaining) == (40, 60, 60)
        with pytest.raises(AmountExceedsUnspent):
            await client.void_grant(lot.lot_id, 61)
        with pytest.raises(LotNotFound):
            await client.void_grant(str(uuid.uuid4()))

        created = await client.create_grant_schedule(
            acct,
            ASSET,
            500,
            PeriodUnit.MONTH,
            category="allowance",
            rollover=Rollover(cap_percent=50),
            metadata={"plan": "pro"},
        )
        schedule = created.schedule
        assert created.balance is not None and created.balance.available == 560
        assert (schedule.state, schedule.rollover) == (
            ScheduleState.ACTIVE,
            Rollover(cap_percent=50, priority=100),  # the default priority, made explicit
        )
        assert (await client.get_grant_schedule(schedule.schedule_id)) == schedule
        updated = await client.update_grant_schedule(schedule.schedule_id, amount=600)
        assert updated.schedule.amount == 600 and updated.balance is None
        assert updated.schedule.terms_from_period == schedule.next_period
        second = await client.create_grant_schedule(acct, ASSET, 1, PeriodUnit.DAY)
        listed = [s.schedule_id async for s in client.iter_grant_schedules(acct, page_size=1)]
        assert listed == [schedule.schedule_id, second.schedule.schedule_id]
        key = uuid.uuid4().hex
        cancelled = await client.cancel_grant_schedule(
            schedule.schedule_id, void_remainder=True, idempotency_key=key
        )
        assert cancelled.schedule.state is ScheduleState.CANCELLED
        assert cancelled.balance is not None and cancelled.balance.available == 61
        replay = await client.cancel_grant_schedule(
            schedule.schedule_id, void_remainder=True, idempotency_key=key
        )
        assert replay.replayed
        with pytest.raises(ScheduleNotFound):
            await client.get_grant_schedule(str(uuid.uuid4()))

        # Breakage: what expires, by category and cost basis, attributed to its expiry.
        expires = ledger_server.clock.now() + timedelta(seconds=1)
        await client.grant(
            acct,
            "sms",
            10,
            expires_at=expires,
            category="promotional",
            unit_cost_micros=1_000,
            cost_currency="USD",
        )
        await asyncio.sleep(1.5)
        breakage = await client.get_breakage(acct, "sms")
        assert breakage.credits == 10
        assert [(b.category, b.unit_cost_micros, b.cost_micros) for b in breakage.lines] == [
            ("promotional", 1_000, 10_000)
        ]


@pytest.mark.timeout(60)
async def test_the_blocking_client_has_the_same_methods(ledger_server: RunningServer) -> None:
    def run() -> None:
        with SyncLedgerClient(ledger_server.target) as client:
            acct = f"sync-{uuid.uuid4().hex[:10]}"
            client.create_account(acct)
            created = client.create_grant_schedule(acct, ASSET, 7, PeriodUnit.WEEK)
            assert [s.schedule_id for s in client.iter_grant_schedules(acct)] == [
                created.schedule.schedule_id
            ]
            alert = client.set_balance_alert(acct, ASSET, 50, percent=True)
            assert alert.threshold_amount == 3  # 50% of the last grant, 7
            assert client.get_breakage(acct, ASSET).credits == 0

    await asyncio.to_thread(run)
