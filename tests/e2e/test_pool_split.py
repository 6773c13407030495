"""Shared pools, own lots first, then the pool (issue 18), through the real stub.

A member's spend draws its own spendable lots first, then its nearest pool's,
then the next pool's, as one reservation whose parts stay on the lots they came
from: settle, release, refund and expiry move each part on its own lot's
account. An overdue split hold is expired, exactly once, by whichever of its
pairs is read or written first.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from creditledger.v1 import ledger_pb2 as pb
from google.protobuf import timestamp_pb2

from ledger.storage.verify import verify
from tests.support import pools
from tests.support.manual_server import ServerThread
from tests.support.pools import ASSET, charge, key, refused, reserve, view
from tests.support.rpc import error_info

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[ServerThread]:
    s = ServerThread(database_url)
    yield s
    s.close()


def create(s: ServerThread, parent: str = "", grant: int = 0) -> str:
    return pools.create(s, parent, grant, prefix="split")


def bal(s: ServerThread, acct: str) -> pb.Balance:
    return view(s, acct).balance


def reservation(s: ServerThread, rid: str) -> pb.Reservation:
    return s.stub.GetReservation(pb.GetReservationRequest(reservation_id=rid)).reservation


def assert_verified(s: ServerThread) -> None:
    report = s.run(verify(s.database_url))
    assert report.ok, report.violations
    assert {"reserved_matches_open_reservations", "never_past_cap"} <= set(report.checked)


def test_a_charge_takes_the_members_own_lots_first_then_the_pools(server: ServerThread) -> None:
    """Before the split, 5 own credits and a pool of 1,000 refused a charge of 10."""
    pool = create(server, grant=1000)
    m = create(server, parent=pool, grant=5)
    v = view(server, m)
    assert (v.funded_by, v.may_spend) == (m, 1005)  # where it starts, and all it may take
    out = charge(server, m, 10)
    assert out.taken == 10
    # Filed under the farthest funder, for the member; the reply shows that pair.
    assert (out.reservation.account_id, out.reservation.member_id) == (pool, m)
    assert (out.balance.account_id, out.balance.available) == (pool, 995)
    assert (bal(server, m).available, bal(server, m).settled) == (0, 5)
    assert (bal(server, pool).available, bal(server, pool).settled) == (995, 5)
    assert view(server, m).funded_by == pool
    # Refunded last-drawn first: the pool's part, then the member's own.
    server.stub.Refund(
        pb.RefundRequest(
            reservation_id=out.reservation.reservation_id, amount=7, idempotency_key=key()
        )
    )
    assert (bal(server, pool).available, bal(server, m).available) == (1000, 2)
    assert_verified(server)


def test_a_reserve_splits_and_settle_release_refund_go_back_to_each_lot(
    server: ServerThread,
) -> None:
    pool = create(server, grant=100)
    m = create(server, parent=pool, grant=5)
    held = reserve(server, m, 20)
    rid = held.reservation.reservation_id
    assert (held.reservation.account_id, held.reservation.member_id, held.taken) == (pool, m, 20)
    assert (bal(server, m).available, bal(server, m).reserved) == (0, 5)
    assert (bal(server, pool).available, bal(server, pool).reserved) == (85, 15)
    # A partial release gives back in draw order, as for any hold: the member's own first.
    server.stub.Release(pb.ReleaseRequest(reservation_id=rid, amount=4, idempotency_key=key()))
    assert (bal(server, m).available, bal(server, m).reserved) == (4, 1)
    assert (bal(server, pool).available, bal(server, pool).reserved) == (85, 15)
    # Settled in draw order: the member's last 1, then 6 of the pool's; final
    # gives the pool's other 9 back.
    server.stub.Settle(
        pb.SettleRequest(reservation_id=rid, amount=7, final=True, idempotency_key=key())
    )
    mb, pb_ = bal(server, m), bal(server, pool)
    assert (mb.available, mb.reserved, mb.settled) == (4, 0, 1)
    assert (pb_.available, pb_.reserved, pb_.settled) == (94, 0, 6)
    got = reservation(server, rid)
    assert (got.state, got.settled, got.released) == (pb.Reservation.STATE_CLOSED, 7, 13)
    server.stub.Refund(pb.RefundRequest(reservation_id=rid, amount=7, idempotency_key=key()))
    assert (bal(server, m).available, bal(server, pool).available) == (5, 100)
    assert_verified(server)


def test_without_lots_anywhere_reject_refuses_with_the_chain_total(server: ServerThread) -> None:
    pool = create(server, grant=6)
    m = create(server, parent=pool, grant=5)
    info = error_info(refused(lambda: charge(server, m, 12)))
    assert (info.reason, info.metadata["available"], info.metadata["funded_by"]) == (
        "INSUFFICIENT_CREDITS",
        "11",
        pool,
    )
    assert (bal(server, m).available, bal(server, pool).available) == (5, 6)  # nothing taken
    # CAP takes what the whole chain has, and what the member's cap allows.
    assert charge(server, m, 12, pb.OVERAGE_MODE_CAP).taken == 11
    assert (bal(server, m).available, bal(server, pool).available) == (0, 0)
    assert_verified(server)


def test_cap_mode_stops_at_the_members_cap_across_own_lots_and_pool(server: ServerThread) -> None:
    pool = create(server, grant=100)
    m = create(server, parent=pool, grant=5)
    server.stub.SetMemberCap(
        pb.SetMemberCapRequest(
            account_id=m, asset=ASSET, window=pb.CAP_WINDOW_DAY, cap=8, idempotency_key=key()
        )
    )
    assert view(server, m).may_spend == 8
    assert charge(server, m, 50, pb.OVERAGE_MODE_CAP).taken == 8
    assert (bal(server, m).available, bal(server, pool).available) == (0, 97)
    info = error_info(refused(lambda: charge(server, m, 1)))
    assert (info.reason, info.metadata["remaining"]) == ("CAP_EXCEEDED", "0")
    assert_verified(server)


def test_debt_goes_on_the_nearest_pair_that_may_go_below_zero(server: ServerThread) -> None:
    pool = create(server, grant=10)
    m = create(server, parent=pool, grant=5)
    server.stub.SetSpendingLimits(
        pb.SetSpendingLimitsRequest(account_id=pool, asset=ASSET, floor=-50, idempotency_key=key())
    )
    out = charge(server, m, 30, pb.OVERAGE_MODE_DEBT)
    assert out.taken == 30
    assert (bal(server, m).available, bal(server, m).debt) == (0, 0)
    assert (bal(server, pool).available, bal(server, pool).debt) == (0, 15)
    info = error_info(refused(lambda: charge(server, m, 36, pb.OVERAGE_MODE_DEBT)))
    assert (info.reason, info.metadata["available"]) == ("INSUFFICIENT_CREDITS", "35")
    assert_verified(server)


def test_a_group_leg_splits_and_the_group_counts_each_pair_once(server: ServerThread) -> None:
    pool = create(server, grant=100)
    a, b = create(server, parent=pool, grant=5), create(server, parent=pool)

    def group(x: int, y: int) -> pb.ReserveGroupResponse:
        legs = [
            pb.ReserveGroupLeg(account_id=a, asset=ASSET, amount=x, leg_key="a"),
            pb.ReserveGroupLeg(account_id=b, asset=ASSET, amount=y, leg_key="b"),
        ]
        return server.stub.ReserveGroup(pb.ReserveGroupRequest(legs=legs, idempotency_key=key()))

    info = error_info(refused(lambda: group(10, 96)))  # a takes 5 own + 5 pool: 95 left
    assert (info.reason, info.metadata["leg_key"], info.metadata["available"]) == (
        "INSUFFICIENT_CREDITS",
        "b",
        "95",
    )
    assert (bal(server, a).reserved, bal(server, pool).reserved) == (0, 0)  # all or nothing
    done = group(10, 95)
    assert [(r.account_id, r.member_id) for r in done.group.reservations] == [(pool, a), (pool, b)]
    assert {(x.account_id, x.reserved, x.available) for x in done.balances} == {
        (a, 5, 0),
        (pool, 100, 0),
    }
    first = done.group.reservations[0].reservation_id
    server.stub.Release(pb.ReleaseRequest(reservation_id=first, idempotency_key=key()))
    assert (bal(server, a).available, bal(server, pool).available) == (5, 5)
    assert_verified(server)


def _ts(at: Any) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(at)
    return out


@pytest.mark.parametrize("first_reader", ["pool", "member"])
def test_an_overdue_split_hold_expires_once_whichever_pair_is_read_first(
    server: ServerThread, first_reader: str
) -> None:
    pool = create(server, grant=100)
    m = create(server, parent=pool, grant=5)
    held = reserve(server, m, 20, ttl_s=60)
    rid = held.reservation.reservation_id
    before = server.clock.t
    versions = (bal(server, m).version, bal(server, pool).version)
    server.advance(timedelta(seconds=61))
    # No sweep, no write: the first read, of either pair, sees both parts given back.
    order = [pool, m] if first_reader == "pool" else [m, pool]
    seen = {acct: bal(server, acct) for acct in order}
    assert (seen[pool].available, seen[pool].reserved) == (100, 0)
    assert (seen[m].available, seen[m].reserved) == (5, 0)
    # One change of each pair (the expiry), whoever saw it first.
    assert (seen[m].version, seen[pool].version) == (versions[0] + 1, versions[1] + 1)
    got = reservation(server, rid)
    assert (got.state, got.released) == (pb.Reservation.STATE_EXPIRED, 20)
    # As of an instant: before the deadline the hold, after it the expiry.
    for acct, held_then in ((pool, 15), (m, 5)):
        then = server.stub.GetBalance(
            pb.GetBalanceRequest(account_id=acct, asset=ASSET, as_of_time=_ts(before))
        ).balance
        assert then.reserved == held_then
        now = server.stub.GetBalance(
            pb.GetBalanceRequest(account_id=acct, asset=ASSET, as_of_time=_ts(server.clock.t))
        ).balance
        assert (now.reserved, now.available) == (0, seen[acct].available)
    # A write on either pair and the sweeper then make it durable, once.
    assert charge(server, m, 1).taken == 1
    server.sweep()
    assert (bal(server, m).available, bal(server, pool).available) == (4, 100)
    assert (bal(server, pool).version, bal(server, m).version) == (versions[1] + 1, versions[0] + 2)
    info = error_info(
        refused(
            lambda: server.stub.Settle(
                pb.SettleRequest(reservation_id=rid, amount=1, idempotency_key=key())
            )
        )
    )
    assert info.reason == "RESERVATION_EXPIRED"
    assert_verified(server)


def test_the_sweeper_expires_a_split_hold_on_both_pairs(server: ServerThread) -> None:
    pool = create(server, grant=100)
    m = create(server, parent=pool, grant=5)
    reserve(server, m, 20, ttl_s=60)
    server.advance(timedelta(seconds=61))
    server.sweep()
    assert (bal(server, m).reserved, bal(server, pool).reserved) == (0, 0)
    assert (bal(server, m).available, bal(server, pool).available) == (5, 100)
    assert_verified(server)


def test_list_reservations_shows_what_a_member_spent_from_its_pool(server: ServerThread) -> None:
    pool = create(server, grant=100)
    m = create(server, parent=pool, grant=5)
    other = create(server, parent=pool)
    split = reserve(server, m, 20).reservation.reservation_id
    pooled = reserve(server, other, 3).reservation.reservation_id

    def listed(acct: str, state: Any = 0) -> list[str]:
        req = pb.ListReservationsRequest(account_id=acct, asset=ASSET, state=state)
        return [r.reservation_id for r in server.stub.ListReservations(req).reservations]

    assert listed(m) == [split]
    assert listed(m, pb.Reservation.STATE_OPEN) == [split]
    assert listed(other) == [pooled]
    assert sorted(listed(pool)) == sorted([split, pooled])


def test_a_hold_split_over_three_levels_expires_on_each_when_the_top_is_written(
    server: ServerThread,
) -> None:
    """The top pool's write loads the middle pool's balance too (the accounts a
    hold's allocations name), though nothing else ties the two pairs."""
    top = create(server, grant=100)
    team = create(server, parent=top, grant=3)
    m = create(server, parent=team, grant=5)
    held = reserve(server, m, 20, ttl_s=60)
    assert (held.reservation.account_id, held.reservation.member_id) == (top, m)
    assert [bal(server, a).reserved for a in (m, team, top)] == [5, 3, 12]
    server.advance(timedelta(seconds=61))
    assert charge(server, top, 1).taken == 1  # the first to touch any of them: top's writer
    assert [bal(server, a).available for a in (m, team, top)] == [5, 3, 99]
    assert [bal(server, a).reserved for a in (m, team, top)] == [0, 0, 0]
    assert_verified(server)


def test_a_void_of_a_members_lot_knows_what_its_split_hold_keeps(server: ServerThread) -> None:
    pool = create(server, grant=100)
    m = create(server, parent=pool)
    lot = server.stub.Grant(
        pb.GrantRequest(account_id=m, asset=ASSET, amount=5, idempotency_key=key())
    ).lot.lot_id
    reserve(server, m, 8)  # 5 of m's lot, 3 of the pool's; filed under the pool
    info = error_info(
        refused(
            lambda: server.stub.VoidGrant(pb.VoidGrantRequest(lot_id=lot, idempotency_key=key()))
        )
    )
    assert (info.reason, info.metadata["held"], info.metadata["unspent"]) == (
        "CREDITS_HELD",
        "5",
        "0",
    )
    assert_verified(server)


def _three_levels(s: ServerThread) -> tuple[str, str, str, dict[str, str]]:
    """member → team → top, each with a lot of its own: a hold of 20 takes 5, 3 and 12."""
    top = create(s, grant=100)
    team = create(s, parent=top)
    lots = {
        "team": s.stub.Grant(
            pb.GrantRequest(account_id=team, asset=ASSET, amount=3, idempotency_key=key())
        ).lot.lot_id
    }
    m = create(s, parent=team, grant=5)
    return top, team, m, lots


def test_list_reservations_of_a_middle_pool_shows_a_hold_drawing_on_it(
    server: ServerThread,
) -> None:
    """The team is neither the account the hold is filed under (top) nor its
    spender (m), but 3 of its credits are held: its list shows the hold."""
    top, team, m, _ = _three_levels(server)
    held = reserve(server, m, 20).reservation
    assert (held.account_id, held.member_id) == (top, m)
    rid = held.reservation_id

    def listed(acct: str, state: Any = 0) -> list[str]:
        req = pb.ListReservationsRequest(account_id=acct, asset=ASSET, state=state)
        return [r.reservation_id for r in server.stub.ListReservations(req).reservations]

    for acct in (m, team, top):
        assert listed(acct) == [rid], acct
        assert listed(acct, pb.Reservation.STATE_OPEN) == [rid], acct
    server.stub.Release(pb.ReleaseRequest(reservation_id=rid, idempotency_key=key()))
    assert listed(team) == [rid]
    assert listed(team, pb.Reservation.STATE_CLOSED) == [rid]
    assert listed(team, pb.Reservation.STATE_OPEN) == []
    # A sibling pool's list does not show it.
    assert listed(create(server, parent=top)) == []
    assert_verified(server)


def test_a_void_of_a_middle_pools_lot_knows_what_a_three_level_hold_keeps(
    server: ServerThread,
) -> None:
    top, team, m, lots = _three_levels(server)
    reserve(server, m, 20)  # 5 of m's, 3 of team's, 12 of top's; filed under top
    info = error_info(
        refused(
            lambda: server.stub.VoidGrant(
                pb.VoidGrantRequest(lot_id=lots["team"], idempotency_key=key())
            )
        )
    )
    assert (info.reason, info.metadata["held"], info.metadata["unspent"]) == (
        "CREDITS_HELD",
        "3",
        "0",
    )
    assert [bal(server, a).reserved for a in (m, team, top)] == [5, 3, 12]
    assert_verified(server)


@pytest.mark.parametrize("first_reader", ["team", "member", "top"])
def test_an_overdue_three_level_hold_expires_once_whichever_pair_is_read_first(
    server: ServerThread, first_reader: str
) -> None:
    top, team, m, _ = _three_levels(server)
    rid = reserve(server, m, 20, ttl_s=60).reservation.reservation_id
    versions = [bal(server, a).version for a in (m, team, top)]
    server.advance(timedelta(seconds=61))
    # No sweep, no write: this pair's read is the first to see the deadline
    # (the middle pool's: neither filed under nor spender).
    first = {"team": team, "member": m, "top": top}[first_reader]
    seen = bal(server, first)
    assert (seen.available, seen.reserved) == ({team: 3, m: 5, top: 100}[first], 0)
    assert [bal(server, a).available for a in (m, team, top)] == [5, 3, 100]
    assert [bal(server, a).reserved for a in (m, team, top)] == [0, 0, 0]
    assert [bal(server, a).version for a in (m, team, top)] == [v + 1 for v in versions]
    got = reservation(server, rid)
    assert (got.state, got.released) == (pb.Reservation.STATE_EXPIRED, 20)
    # The team's write, then the sweeper, make it durable: each pair changes once.
    assert charge(server, team, 1).taken == 1
    server.sweep()
    assert [bal(server, a).available for a in (m, team, top)] == [5, 2, 100]
    assert [bal(server, a).version for a in (m, team, top)] == [
        versions[0] + 1,
        versions[1] + 2,
        versions[2] + 1,
    ]
    req = pb.ListReservationsRequest(
        account_id=team, asset=ASSET, state=pb.Reservation.STATE_EXPIRED
    )
    assert [r.reservation_id for r in server.stub.ListReservations(req).reservations] == [rid]
    assert_verified(server)
