"""Credit limits and overage modes (issue 18), through the real stub.

A pair's floor (SetSpendingLimits, admin only) says how far below zero a
DEBT-mode spend may take it; what its lots lack is lent by @overdraft and owed
(Balance.debt) until a grant pays it back first. CAP takes what can be spent
down to zero. REJECT, the default, is unchanged.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb

from ledger.storage.verify import verify
from tests.support.manual_server import ServerThread
from tests.support.rpc import error_info, field_violations, replayed

ASSET = "sms"
CAP = pb.OVERAGE_MODE_CAP
DEBT = pb.OVERAGE_MODE_DEBT

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[ServerThread]:
    s = ServerThread(database_url)
    yield s
    s.close()


def key() -> str:
    return uuid.uuid4().hex


def account(s: ServerThread, grant: int = 0) -> str:
    acct = f"lim-{uuid.uuid4().hex[:12]}"
    s.stub.CreateAccount(pb.CreateAccountRequest(account_id=acct))
    if grant:
        s.stub.Grant(
            pb.GrantRequest(account_id=acct, asset=ASSET, amount=grant, idempotency_key=key())
        )
    return acct


def balance(s: ServerThread, acct: str) -> pb.Balance:
    return s.stub.GetBalance(pb.GetBalanceRequest(account_id=acct, asset=ASSET)).balance


def set_floor(s: ServerThread, acct: str, floor: int, k: str = "") -> pb.SetSpendingLimitsResponse:
    return s.stub.SetSpendingLimits(
        pb.SetSpendingLimitsRequest(
            account_id=acct, asset=ASSET, floor=floor, idempotency_key=k or key()
        )
    )


def charge(
    s: ServerThread, acct: str, amount: int, mode: Any = 0, k: str = ""
) -> pb.ChargeResponse:
    return s.stub.Charge(
        pb.ChargeRequest(
            account_id=acct, asset=ASSET, amount=amount, idempotency_key=k or key(), overage=mode
        )
    )


def refused(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def assert_verified(s: ServerThread) -> None:
    report = s.run(verify(s.database_url))
    assert report.ok, report.violations
    assert "never_below_floor" in report.checked


def test_set_spending_limits_is_versioned_idempotent_and_shown_by_get_balance(
    server: ServerThread,
) -> None:
    acct = account(server, grant=10)
    k = key()
    first = set_floor(server, acct, -100, k)
    assert (first.balance.floor, first.balance.version, first.balance.spendable) == (-100, 2, 110)
    again, call = server.stub.SetSpendingLimits.with_call(
        pb.SetSpendingLimitsRequest(account_id=acct, asset=ASSET, floor=-100, idempotency_key=k)
    )
    assert replayed(call.trailing_metadata()) and again == first
    assert set_floor(server, acct, -100).balance.version == 2  # the same floor: no change
    got = balance(server, acct)
    assert (got.floor, got.available, got.debt, got.spendable, got.version) == (-100, 10, 0, 110, 2)
    err = refused(lambda: set_floor(server, acct, -50, k))
    assert error_info(err).reason == "IDEMPOTENCY_KEY_REUSED"
    for bad in (1, -(10**15) - 1):
        err = refused(lambda bad=bad: set_floor(server, acct, bad))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and field_violations(err) == ["floor"]
    err = refused(lambda: set_floor(server, "lim-nobody", -1))
    assert error_info(err).reason == "ACCOUNT_NOT_FOUND"
    stale = pb.SetSpendingLimitsRequest(
        account_id=acct,
        asset=ASSET,
        floor=-1,
        idempotency_key=key(),
        preconditions=[pb.Precondition(version=1)],
    )
    assert (
        error_info(refused(lambda: server.stub.SetSpendingLimits(stale))).reason
        == "PRECONDITION_FAILED"
    )


def test_debt_goes_below_zero_down_to_the_floor_only_and_a_grant_repays_it_first(
    server: ServerThread,
) -> None:
    acct = account(server, grant=30)
    set_floor(server, acct, -50)
    # REJECT (the default) is unchanged by a floor: never below zero.
    err = refused(lambda: charge(server, acct, 31))
    assert (
        error_info(err).reason == "INSUFFICIENT_CREDITS"
        and error_info(err).metadata["available"] == "30"
    )
    out = charge(server, acct, 70, DEBT)
    assert out.taken == 70 and out.reservation.settled == 70
    assert (out.balance.available, out.balance.debt, out.balance.spendable) == (0, 40, 10)
    err = refused(lambda: charge(server, acct, 11, DEBT))  # past the floor
    info = error_info(err)
    assert info.reason == "INSUFFICIENT_CREDITS" and info.metadata["available"] == "10"
    # A DEBT-mode hold, released, gives back to its (overdraft) lot; the position holds.
    held = server.stub.Reserve(
        pb.ReserveRequest(
            account_id=acct, asset=ASSET, amount=10, idempotency_key=key(), overage=DEBT
        )
    )
    assert (held.balance.debt, held.balance.reserved, held.balance.spendable) == (50, 10, 0)
    server.stub.Release(
        pb.ReleaseRequest(reservation_id=held.reservation.reservation_id, idempotency_key=key())
    )
    assert (balance(server, acct).available, balance(server, acct).debt) == (10, 50)
    assert refused(lambda: charge(server, acct, 1)).code() == grpc.StatusCode.FAILED_PRECONDITION
    # A grant pays the debt back first, as entries of their own movement.
    g = server.stub.Grant(
        pb.GrantRequest(account_id=acct, asset=ASSET, amount=45, idempotency_key=key())
    )
    assert (g.balance.debt, g.balance.available, g.lot.remaining) == (5, 10, 0)
    g = server.stub.Grant(
        pb.GrantRequest(account_id=acct, asset=ASSET, amount=100, idempotency_key=key())
    )
    assert (g.balance.debt, g.balance.available, g.lot.remaining) == (0, 105, 95)
    entries = server.stub.ListEntries(pb.ListEntriesRequest(account_id=acct)).entries
    movements = [e.movement for e in entries]
    assert movements.count(pb.Entry.MOVEMENT_DEBT_REPAYMENT) == 2
    assert pb.Entry.MOVEMENT_DEBT in movements
    assert sum(e.amount for e in entries if e.movement == pb.Entry.MOVEMENT_DEBT_REPAYMENT) == -50
    assert charge(server, acct, 105).balance.available == 0  # REJECT again spends to zero
    assert_verified(server)


def test_cap_takes_what_is_available_and_zero_is_a_replayed_answer(server: ServerThread) -> None:
    acct = account(server, grant=2400)
    r = server.stub.Reserve(
        pb.ReserveRequest(
            account_id=acct, asset=ASSET, amount=3000, idempotency_key=key(), overage=CAP
        )
    )
    assert (r.taken, r.reservation.amount, r.balance.available, r.balance.reserved) == (
        2400,
        2400,
        0,
        2400,
    )
    k = key()
    zero = charge(server, acct, 5, CAP, k)
    assert (zero.taken, zero.reservation.reservation_id, zero.balance.available) == (0, "", 0)
    assert zero.balance.version == r.balance.version  # nothing changed
    server.stub.Grant(
        pb.GrantRequest(account_id=acct, asset=ASSET, amount=100, idempotency_key=key())
    )
    again, call = server.stub.Charge.with_call(
        pb.ChargeRequest(account_id=acct, asset=ASSET, amount=5, idempotency_key=k, overage=CAP)
    )
    assert replayed(call.trailing_metadata()) and again.taken == 0
    # CAP never goes below zero, whatever the floor; within what there is it takes it all.
    set_floor(server, acct, -1000)
    assert charge(server, acct, 7, CAP).taken == 7
    assert charge(server, acct, 500, CAP).taken == 93
    assert balance(server, acct).debt == 0
    # The mode is part of the request: the same key in another mode is another request.
    err = refused(lambda: charge(server, acct, 5, pb.OVERAGE_MODE_REJECT, k))
    assert error_info(err).reason == "IDEMPOTENCY_KEY_REUSED"
    err = refused(lambda: charge(server, acct, 5, 7))
    assert field_violations(err) == ["overage"]
    assert_verified(server)


def test_the_default_mode_is_reject_and_hashes_as_before(server: ServerThread) -> None:
    acct = account(server, grant=5)
    k = key()
    first = charge(server, acct, 3, 0, k)
    assert first.taken == 3
    # An explicit REJECT is the same request as an unset mode.
    again, call = server.stub.Charge.with_call(
        pb.ChargeRequest(
            account_id=acct,
            asset=ASSET,
            amount=3,
            idempotency_key=k,
            overage=pb.OVERAGE_MODE_REJECT,
        )
    )
    assert replayed(call.trailing_metadata()) and again.reservation == first.reservation


# ---------------------------------------------------------------- ReserveGroup's overage modes


def leg(acct: str, amount: int, leg_key: str) -> pb.ReserveGroupLeg:
    return pb.ReserveGroupLeg(account_id=acct, asset=ASSET, amount=amount, leg_key=leg_key)


def group_request(
    legs: list[pb.ReserveGroupLeg], mode: Any = 0, k: str = "", **fields: Any
) -> pb.ReserveGroupRequest:
    return pb.ReserveGroupRequest(legs=legs, idempotency_key=k or key(), overage=mode, **fields)


def taken(resp: pb.ReserveGroupResponse) -> list[tuple[str, int, bool]]:
    """(leg_key, amount taken, stored: has an id) of each leg, in request order."""
    return [(r.leg_key, r.amount, bool(r.reservation_id)) for r in resp.group.reservations]


def test_a_group_in_reject_mode_is_unchanged_all_or_nothing(server: ServerThread) -> None:
    a, b = account(server, grant=100), account(server, grant=10)
    set_floor(server, a, -1000)  # a floor changes nothing for REJECT
    req = group_request([leg(a, 60, "a1"), leg(a, 40, "a2"), leg(b, 11, "b1")])
    info = error_info(refused(lambda: server.stub.ReserveGroup(req)))
    assert (info.reason, info.metadata["leg_key"], info.metadata["available"]) == (
        "INSUFFICIENT_CREDITS",
        "b1",
        "10",
    )
    assert (balance(server, a).reserved, balance(server, a).debt) == (0, 0)
    # An explicit REJECT is the same request as an unset mode (the key's first outcome).
    again = dataclass_copy(req, overage=pb.OVERAGE_MODE_REJECT)
    err = refused(lambda: server.stub.ReserveGroup(again))
    assert error_info(err).reason == "INSUFFICIENT_CREDITS" and replayed(err.trailing_metadata())
    done = server.stub.ReserveGroup(group_request([leg(a, 60, "a1"), leg(a, 40, "a2")]))
    assert taken(done) == [("a1", 60, True), ("a2", 40, True)]
    assert (balance(server, a).available, balance(server, a).debt) == (0, 0)
    assert_verified(server)


def dataclass_copy(req: pb.ReserveGroupRequest, **fields: Any) -> pb.ReserveGroupRequest:
    out = pb.ReserveGroupRequest()
    out.CopyFrom(req)
    for name, value in fields.items():
        setattr(out, name, value)
    return out


def test_a_group_in_cap_mode_takes_what_is_left_per_leg_and_zero_is_a_replayed_answer(
    server: ServerThread,
) -> None:
    a, b, c = account(server, grant=100), account(server, grant=30), account(server)
    capped = account(server, grant=100)
    server.stub.SetMemberCap(
        pb.SetMemberCapRequest(
            account_id=capped, asset=ASSET, window=pb.CAP_WINDOW_DAY, cap=25, idempotency_key=key()
        )
    )
    k = key()
    req = group_request(
        [
            leg(a, 60, "a1"),
            leg(a, 60, "a2"),  # what a1 left of a's 100
            leg(c, 10, "c1"),  # c has nothing: 0 taken, not refused
            leg(b, 50, "b1"),
            leg(capped, 20, "d1"),
            leg(capped, 20, "d2"),  # the day cap's 25, d1 counted
        ],
        pb.OVERAGE_MODE_CAP,
        k,
        metadata={"order": "42"},
    )
    first = server.stub.ReserveGroup(req)
    assert taken(first) == [
        ("a1", 60, True),
        ("a2", 40, True),
        ("c1", 0, False),
        ("b1", 30, True),
        ("d1", 20, True),
        ("d2", 5, True),
    ]
    zero = first.group.reservations[2]
    assert (zero.state, zero.group_id, zero.account_id) == (
        pb.Reservation.STATE_CLOSED,
        first.group.group_id,
        c,
    )
    assert all(r.metadata["order"] == "42" for r in first.group.reservations)
    assert [(x.account_id, x.available, x.reserved) for x in first.balances] == sorted(
        [(a, 0, 100), (b, 0, 30), (c, 0, 0), (capped, 75, 25)]
    )
    # The first outcome is final: more credits later do not change the replay.
    server.stub.Grant(pb.GrantRequest(account_id=c, asset=ASSET, amount=10, idempotency_key=key()))
    again, call = server.stub.ReserveGroup.with_call(req)
    assert replayed(call.trailing_metadata()) and again == first
    # Stored: the legs that took something, each with the group's metadata.
    got = server.stub.GetReservationGroup(
        pb.GetReservationGroupRequest(group_id=first.group.group_id)
    )
    assert [r.leg_key for r in got.group.reservations] == ["a1", "a2", "b1", "d1", "d2"]
    a2 = server.stub.GetReservation(
        pb.GetReservationRequest(reservation_id=first.group.reservations[1].reservation_id)
    )
    assert (a2.reservation.amount, a2.reservation.metadata["order"]) == (40, "42")
    # A group that takes nothing at all is an answer too: no group id, nothing stored.
    k0 = key()
    req0 = group_request([leg(a, 5, "x"), leg(b, 5, "y")], pb.OVERAGE_MODE_CAP, k0)
    none = server.stub.ReserveGroup(req0)
    assert (none.group.group_id, taken(none)) == ("", [("x", 0, False), ("y", 0, False)])
    server.stub.Grant(pb.GrantRequest(account_id=a, asset=ASSET, amount=10, idempotency_key=key()))
    again, call = server.stub.ReserveGroup.with_call(req0)
    assert replayed(call.trailing_metadata()) and again == none
    # The mode is part of the request: the same key in another mode is another request.
    err = refused(lambda: server.stub.ReserveGroup(dataclass_copy(req0, overage=0)))
    assert error_info(err).reason == "IDEMPOTENCY_KEY_REUSED"
    err = refused(lambda: server.stub.ReserveGroup(dataclass_copy(req0, overage=9)))
    assert field_violations(err) == ["overage"]
    assert_verified(server)


def test_a_group_in_debt_mode_goes_below_zero_down_to_each_floor_all_or_nothing(
    server: ServerThread,
) -> None:
    a, b = account(server, grant=30), account(server, grant=10)
    set_floor(server, a, -50)
    pool = account(server, grant=10)
    set_floor(server, pool, -100)
    member = f"lim-{uuid.uuid4().hex[:12]}"
    server.stub.CreateAccount(pb.CreateAccountRequest(account_id=member, parent_id=pool))
    # a may go to -50: 30 + 50 = 80 for a1 and a2 together; a2 is 10 past it.
    k = key()
    over = group_request(
        [leg(a, 50, "a1"), leg(member, 60, "m1"), leg(a, 40, "a2"), leg(b, 10, "b1")],
        pb.OVERAGE_MODE_DEBT,
        k,
    )
    err = refused(lambda: server.stub.ReserveGroup(over))
    info = error_info(err)
    assert (info.reason, info.metadata["leg_key"], info.metadata["available"]) == (
        "INSUFFICIENT_CREDITS",
        "a2",
        "30",
    )
    for acct, bal in ((a, 30), (pool, 10), (b, 10)):
        got = balance(server, acct)
        assert (got.available, got.reserved, got.debt) == (bal, 0, 0)  # nothing changed
    err = refused(lambda: server.stub.ReserveGroup(over))
    again_info = error_info(err)
    assert again_info.reason == info.reason and again_info.metadata["leg_key"] == "a2"
    assert replayed(err.trailing_metadata())
    # Within every floor: each pair lends what its lots lack, in the group's transaction.
    k = key()
    req = group_request(
        [leg(a, 50, "a1"), leg(member, 60, "m1"), leg(a, 30, "a2"), leg(b, 10, "b1")],
        pb.OVERAGE_MODE_DEBT,
        k,
    )
    done = server.stub.ReserveGroup(req)
    assert taken(done) == [("a1", 50, True), ("m1", 60, True), ("a2", 30, True), ("b1", 10, True)]
    assert done.group.reservations[1].account_id == pool
    assert done.group.reservations[1].member_id == member
    shown = {x.account_id: (x.available, x.reserved, x.debt, x.spendable) for x in done.balances}
    assert shown == {a: (0, 80, 50, 0), pool: (0, 60, 50, 50), b: (0, 10, 0, 0)}
    again, call = server.stub.ReserveGroup.with_call(req)
    assert replayed(call.trailing_metadata()) and again == done
    entries = server.stub.ListEntries(pb.ListEntriesRequest(account_id=a, asset=ASSET)).entries
    lent = [e for e in entries if e.movement == pb.Entry.MOVEMENT_DEBT]
    assert [e.amount for e in lent] == [50]  # one loan for both legs on a
    assert lent[0].transaction_id == next(
        e.transaction_id for e in entries if e.movement == pb.Entry.MOVEMENT_RESERVE
    )
    # Releasing a2 gives its credits back to a's lots; the debt stays until a grant.
    server.stub.Release(
        pb.ReleaseRequest(
            reservation_id=done.group.reservations[2].reservation_id, idempotency_key=key()
        )
    )
    assert (balance(server, a).available, balance(server, a).debt) == (30, 50)
    g = server.stub.Grant(
        pb.GrantRequest(account_id=a, asset=ASSET, amount=60, idempotency_key=key())
    )
    assert (g.balance.debt, g.balance.available) == (0, 40)
    # DEBT goes below the floor never, and past a member's cap never either.
    server.stub.SetMemberCap(
        pb.SetMemberCapRequest(
            account_id=member, asset=ASSET, window=pb.CAP_WINDOW_DAY, cap=61, idempotency_key=key()
        )
    )
    req = group_request([leg(a, 1, "a1"), leg(member, 2, "m1")], pb.OVERAGE_MODE_DEBT)
    info = error_info(refused(lambda: server.stub.ReserveGroup(req)))
    assert (info.reason, info.metadata["leg_key"], info.metadata["remaining"]) == (
        "CAP_EXCEEDED",
        "m1",
        "1",
    )
    assert balance(server, a).reserved == 50  # nothing changed (a1 not held either)
    assert_verified(server)
