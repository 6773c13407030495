"""64 spenders on one pool with member caps, through two replicas (issue 18).

Two in-process replicas on one fresh database elect one writer; the other
forwards. 64 members of one pool spend at once through both, in every mode
(REJECT charges, CAP reserves settled or released, DEBT charges down to the
pool's floor), until the pool is dry and their caps are full. The pool never
goes below its floor, no member ever passes its caps, and `ledger verify`
proves both from the journal (never_below_floor, never_past_cap). Run twice:
members with no lots of their own, and members with a few own credits each,
spent first, then the pool's, in one reservation (split spends).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import asyncpg
import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from creditledger.v1.ledger_pb2_grpc import LedgerServiceStub

from ledger.app import App
from ledger.config import Config
from ledger.storage.verify import verify
from tests.support import db as support_db
from tests.support.rpc import error_info

if TYPE_CHECKING:
    from creditledger.v1.ledger_pb2_grpc import LedgerServiceAsyncStub

pytestmark = pytest.mark.timeout(180)

ASSET = "sms"
SPENDERS = 64
POOL_GRANT = 6_000
POOL_FLOOR = -500
DAY_CAP = 120
LIFETIME_CAP = 150
ROUNDS = 12


def key() -> str:
    return uuid.uuid4().hex


@pytest.fixture
async def replicas() -> AsyncIterator[tuple[list[LedgerServiceAsyncStub], str]]:
    db = await support_db.TestDatabase.create("ledger_pools")
    apps = [
        App(
            Config(
                listen="127.0.0.1:0",
                database_url=db.url,
                metrics_listen="",
                internal_listen="127.0.0.1:0",
                sweep_interval_s=0.5,
                drain_s=0.5,
            )
        )
        for _ in range(2)
    ]
    channels = []
    try:
        for app in apps:
            await app.start()
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") for app in apps]
        stubs: list[Any] = [LedgerServiceStub(ch) for ch in channels]
        yield stubs, db.url
    finally:
        for ch in channels:
            await ch.close()
        for app in apps:
            await app.stop()
        await db.drop()


async def _retrying(call: object) -> object:
    """A write through a replica, retried with its key while the writer is elected."""
    for _ in range(100):
        try:
            return await call()  # type: ignore[operator]
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED):
                raise
            await asyncio.sleep(0.05)
    raise AssertionError("no writer elected")


async def _spender(stub: LedgerServiceAsyncStub, member: str, rng: random.Random) -> dict[str, int]:
    seen = {"ok": 0, "INSUFFICIENT_CREDITS": 0, "CAP_EXCEEDED": 0}
    for _ in range(ROUNDS):
        amount = rng.randint(1, 30)
        mode = rng.choice((pb.OVERAGE_MODE_REJECT, pb.OVERAGE_MODE_CAP, pb.OVERAGE_MODE_DEBT))
        k = key()
        try:
            if rng.random() < 0.5:
                req = pb.ChargeRequest(
                    account_id=member, asset=ASSET, amount=amount, idempotency_key=k, overage=mode
                )
                await _retrying(lambda req=req: stub.Charge(req))
            else:
                res = pb.ReserveRequest(
                    account_id=member, asset=ASSET, amount=amount, idempotency_key=k, overage=mode
                )
                held = await _retrying(lambda res=res: stub.Reserve(res))
                rid = held.reservation.reservation_id  # type: ignore[attr-defined]
                if rid:
                    settle = pb.SettleRequest(
                        reservation_id=rid,
                        amount=rng.randint(0, held.taken),  # type: ignore[attr-defined]
                        final=True,
                        idempotency_key=key(),
                    )
                    await _retrying(lambda settle=settle: stub.Settle(settle))
            seen["ok"] += 1
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc
            reason = error_info(exc).reason
            assert reason in seen, exc
            seen[reason] += 1
    return seen


@pytest.mark.parametrize("own", [0, 7], ids=["pool-only", "own-lots-first"])
async def test_64_spenders_on_one_capped_pool_through_two_replicas(
    replicas: tuple[list[LedgerServiceAsyncStub], str], own: int
) -> None:
    stubs, url = replicas
    first = stubs[0]
    pool = f"pool-{key()[:8]}"
    await _retrying(lambda: first.CreateAccount(pb.CreateAccountRequest(account_id=pool)))
    await _retrying(
        lambda: first.Grant(
            pb.GrantRequest(account_id=pool, asset=ASSET, amount=POOL_GRANT, idempotency_key=key())
        )
    )
    await _retrying(
        lambda: first.SetSpendingLimits(
            pb.SetSpendingLimitsRequest(
                account_id=pool, asset=ASSET, floor=POOL_FLOOR, idempotency_key=key()
            )
        )
    )
    members = [f"{pool}:m{i:02d}" for i in range(SPENDERS)]
    for i, member in enumerate(members):
        stub = stubs[i % 2]
        await _retrying(
            lambda stub=stub, member=member: stub.CreateAccount(
                pb.CreateAccountRequest(account_id=member, parent_id=pool)
            )
        )
        if own:
            await _retrying(
                lambda stub=stub, member=member: stub.Grant(
                    pb.GrantRequest(
                        account_id=member, asset=ASSET, amount=own, idempotency_key=key()
                    )
                )
            )
        for window, amount in (
            (pb.CAP_WINDOW_DAY, DAY_CAP),
            (pb.CAP_WINDOW_LIFETIME, LIFETIME_CAP),
        ):
            await _retrying(
                lambda stub=stub, member=member, window=window, amount=amount: stub.SetMemberCap(
                    pb.SetMemberCapRequest(
                        account_id=member, asset=ASSET, window=window, cap=amount,
                        idempotency_key=key(),
                    )
                )
            )  # fmt: skip
    rng = random.Random(18)
    results = await asyncio.gather(
        *(
            _spender(stubs[i % 2], member, random.Random(rng.random()))
            for i, member in enumerate(members)
        )
    )
    totals = {k: sum(r[k] for r in results) for k in results[0]}
    # Both limits were reached: the claim is about contention at the edges.
    assert totals["CAP_EXCEEDED"] > 0 and totals["INSUFFICIENT_CREDITS"] > 0, totals
    pool_view = await first.GetBalance(pb.GetBalanceRequest(account_id=pool, asset=ASSET))
    position = pool_view.balance.available - pool_view.balance.debt
    assert position >= POOL_FLOOR, pool_view
    for member in members:
        v = await stubs[1].GetBalance(pb.GetBalanceRequest(account_id=member, asset=ASSET))
        assert v.funded_by == (pool if v.balance.spendable == 0 else member), v
        assert v.balance.available >= 0 and v.balance.debt == 0
        for c in v.caps:
            assert c.used <= c.cap, (member, c)
    report = await verify(url)
    assert report.ok, report.violations
    assert {"never_below_floor", "never_past_cap", "reserved_matches_open_reservations"} <= set(
        report.checked
    )
    if own:
        # Spends were split: one reservation's entries on a member's pair and the pool's.
        conn = await asyncpg.connect(url)
        try:
            split = await conn.fetchval(
                "SELECT count(*) FROM (SELECT reservation_id FROM entries"
                " WHERE bucket <> 'system' AND reservation_id IS NOT NULL"
                " GROUP BY 1 HAVING count(DISTINCT account_id) = 2) AS s"
            )
        finally:
            await conn.close()
        assert split > 0
