"""Shared pools with member caps (issue 18), through the real stub.

A member spends from its own lots when it has them, else from the nearest
ancestor (pool) that has; its caps (per UTC day, calendar month, lifetime) are
checked against what it settled in the window plus what it holds now, in the
spend's own transaction, and reset at the boundary with nothing running.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb

from ledger.storage.verify import verify
from tests.support.manual_server import ServerThread
from tests.support.pools import ASSET, charge, create, key, refused, reserve, view
from tests.support.rpc import error_info, field_violations

DAY = pb.CAP_WINDOW_DAY
MONTH = pb.CAP_WINDOW_MONTH
LIFETIME = pb.CAP_WINDOW_LIFETIME

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[ServerThread]:
    s = ServerThread(database_url)
    yield s
    s.close()


def cap(s: ServerThread, acct: str, window: Any, amount: int | None) -> pb.SetMemberCapResponse:
    req = pb.SetMemberCapRequest(account_id=acct, asset=ASSET, window=window, idempotency_key=key())
    if amount is not None:
        req.cap = amount
    return s.stub.SetMemberCap(req)


def assert_verified(s: ServerThread) -> None:
    report = s.run(verify(s.database_url))
    assert report.ok, report.violations
    assert {"never_past_cap", "cap_held_matches_open_holds"} <= set(report.checked)


def test_an_account_names_its_pool_at_creation_with_a_bounded_depth(server: ServerThread) -> None:
    top = create(server)
    chain = [top]
    for _ in range(3):
        chain.append(create(server, parent=chain[-1]))
    got = server.stub.GetAccount(pb.GetAccountRequest(account_id=chain[-1])).account
    assert got.parent_id == chain[-2]
    err = refused(lambda: create(server, parent=chain[-1]))
    info = error_info(err)
    assert (err.code(), info.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "POOL_DEPTH_EXCEEDED")
    assert info.metadata["limit"] == "3"
    err = refused(lambda: create(server, parent="pool-nobody"))
    assert error_info(err).reason == "ACCOUNT_NOT_FOUND"
    assert error_info(err).metadata["field"] == "parent_id"
    req = pb.CreateAccountRequest(account_id="pool-self", parent_id="pool-self")
    assert field_violations(refused(lambda: server.stub.CreateAccount(req))) == ["parent_id"]


def test_a_member_without_lots_spends_from_the_nearest_pool_that_has(server: ServerThread) -> None:
    top = create(server, grant=1000)
    team = create(server, parent=top)  # no lots: spends go past it to top
    alice = create(server, parent=team)
    v = view(server, alice)
    assert (v.funded_by, v.may_spend, v.balance.available) == (top, 1000, 0)
    out = charge(server, alice, 30)
    assert out.reservation.account_id == top and out.reservation.member_id == alice
    assert out.balance.account_id == top and out.balance.available == 970
    held = reserve(server, alice, 20)
    rid = held.reservation.reservation_id
    server.stub.Settle(
        pb.SettleRequest(reservation_id=rid, amount=5, final=True, idempotency_key=key())
    )
    assert view(server, top).balance.available == 965
    # The team gets lots of its own: it is now the nearest pool that has.
    server.stub.Grant(
        pb.GrantRequest(account_id=team, asset=ASSET, amount=10, idempotency_key=key())
    )
    assert view(server, alice).funded_by == team
    # A member with lots of its own spends those (and only those).
    server.stub.Grant(
        pb.GrantRequest(account_id=alice, asset=ASSET, amount=3, idempotency_key=key())
    )
    assert view(server, alice).funded_by == alice
    assert charge(server, alice, 3).balance.account_id == alice
    err = refused(lambda: charge(server, create(server, parent=create(server)), 1))
    assert error_info(err).reason == "INSUFFICIENT_CREDITS"
    assert_verified(server)


def test_caps_refuse_with_their_own_reason_and_reset_at_the_boundary(server: ServerThread) -> None:
    pool = create(server, grant=10_000)
    bob = create(server, parent=pool)
    assert cap(server, bob, DAY, 100).balance.cap_day == 100
    cap(server, bob, LIFETIME, 250)
    charge(server, bob, 60)
    r = reserve(server, bob, 30)
    err = refused(lambda: charge(server, bob, 11))
    info = error_info(err)
    assert (err.code(), info.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CAP_EXCEEDED")
    assert (info.metadata["window"], info.metadata["cap"], info.metadata["remaining"]) == (
        "day",
        "100",
        "10",
    )
    assert view(server, pool).balance.available == 10_000 - 90  # nothing changed
    v = view(server, bob)
    assert v.may_spend == 10
    assert {(c.window, c.used, c.remaining) for c in v.caps} == {(DAY, 90, 10), (LIFETIME, 90, 160)}
    # CAP takes what the cap leaves; a release gives the room back.
    assert charge(server, bob, 50, pb.OVERAGE_MODE_CAP).taken == 10
    server.stub.Release(
        pb.ReleaseRequest(reservation_id=r.reservation.reservation_id, idempotency_key=key())
    )
    assert view(server, bob).may_spend == 30
    # The day's window restarts at midnight UTC with nothing running; the lifetime one never.
    now = server.clock.t
    server.advance(
        timedelta(days=1) - timedelta(hours=now.hour, minutes=now.minute, seconds=now.second)
    )
    v = view(server, bob)
    assert {(c.window, c.used, c.remaining) for c in v.caps} == {(DAY, 0, 100), (LIFETIME, 70, 180)}
    charge(server, bob, 100)
    err = refused(lambda: charge(server, bob, 81))
    assert error_info(err).metadata["window"] in ("day", "lifetime")
    cap(server, bob, DAY, None)  # removed
    info = error_info(refused(lambda: charge(server, bob, 81)))
    assert (info.metadata["window"], info.metadata["remaining"]) == ("lifetime", "80")
    assert_verified(server)


def test_a_month_cap_resets_on_the_first(server: ServerThread) -> None:
    pool = create(server, grant=1000)
    carol = create(server, parent=pool)
    cap(server, carol, MONTH, 50)
    charge(server, carol, 50)
    assert error_info(refused(lambda: charge(server, carol, 1))).reason == "CAP_EXCEEDED"
    (resets,) = [c.resets_at.ToDatetime() for c in view(server, carol).caps]
    server.advance(resets.replace(tzinfo=server.clock.t.tzinfo) - server.clock.t)
    assert charge(server, carol, 50).taken == 50
    assert_verified(server)


def test_a_group_is_all_or_nothing_across_members_and_pools(server: ServerThread) -> None:
    p1, p2 = create(server, grant=100), create(server, grant=100)
    a, b, c = create(server, parent=p1), create(server, parent=p1), create(server, parent=p2)
    cap(server, b, DAY, 20)

    def group(amounts: tuple[int, int, int]) -> Any:
        legs = [
            pb.ReserveGroupLeg(account_id=acct, asset=ASSET, amount=n, leg_key=acct)
            for acct, n in zip((a, b, c), amounts, strict=True)
        ]
        return server.stub.ReserveGroup(pb.ReserveGroupRequest(legs=legs, idempotency_key=key()))

    info = error_info(refused(lambda: group((10, 21, 10))))
    assert (info.reason, info.metadata["leg_key"], info.metadata["remaining"]) == (
        "CAP_EXCEEDED",
        b,
        "20",
    )
    info = error_info(refused(lambda: group((85, 20, 10))))  # p1 has 100 for a and b together
    assert (info.reason, info.metadata["leg_key"], info.metadata["funded_by"]) == (
        "INSUFFICIENT_CREDITS",
        b,
        p1,
    )
    assert view(server, p1).balance.reserved == 0 and view(server, p2).balance.reserved == 0
    done = group((80, 20, 10))
    assert [r.account_id for r in done.group.reservations] == [p1, p1, p2]
    assert [r.member_id for r in done.group.reservations] == [a, b, c]
    assert {(x.account_id, x.reserved) for x in done.balances} == {(p1, 100), (p2, 10)}
    assert_verified(server)


def test_a_members_expired_hold_gives_back_to_the_pool_and_the_cap_at_once(
    server: ServerThread,
) -> None:
    pool = create(server, grant=100)
    dan = create(server, parent=pool)
    cap(server, dan, DAY, 40)
    reserve(server, dan, 40, ttl_s=60)
    assert view(server, dan).may_spend == 0
    server.advance(timedelta(seconds=61))
    # No sweep yet: every reader sees the expiry, the pool's credits and the cap's room.
    assert view(server, dan).may_spend == 40
    assert view(server, pool).balance.available == 100
    assert charge(server, dan, 40).taken == 40
    server.sweep()
    assert_verified(server)


def test_a_member_may_condition_its_spend_on_its_pools_version(server: ServerThread) -> None:
    pool = create(server, grant=100)
    erin = create(server, parent=pool)
    seen = view(server, pool).balance.version

    def guarded(account_id: str, version: int, k: str = "") -> pb.ChargeRequest:
        return pb.ChargeRequest(
            account_id=erin, asset=ASSET, amount=5, idempotency_key=k or key(),
            preconditions=[pb.Precondition(account_id=account_id, asset=ASSET, version=version)],
        )  # fmt: skip

    assert server.stub.Charge(guarded(pool, seen)).balance.version == seen + 1
    info = error_info(refused(lambda: server.stub.Charge(guarded(pool, seen))))
    assert (info.reason, info.metadata["account_id"]) == ("PRECONDITION_FAILED", pool)
    # A pair the spend cannot touch: bad input, recorded nowhere (the key still runs).
    k = key()
    err = refused(lambda: server.stub.Charge(guarded(create(server), 0, k)))
    assert field_violations(err) == ["preconditions[0].account_id"]
    assert (
        server.stub.Charge(
            pb.ChargeRequest(account_id=erin, asset=ASSET, amount=5, idempotency_key=k)
        ).taken
        == 5
    )
