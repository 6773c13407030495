"""Versions and conditional writes (issue 18), through the real stub.

Every change of an account x asset gives it one more version: each mutation
that moves it and each deadline (hold or lot expiry) applied to it, whether a
write, the sweeper or only a read applied it. Every mutation may carry
preconditions on the pairs it touches; a failed one is PRECONDITION_FAILED,
changes nothing, and is the key's first outcome (replayed).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from google.protobuf import duration_pb2, timestamp_pb2

from ledger.domain import commands as c
from ledger.domain import limits
from ledger.storage.verify import verify
from tests.support.manual_server import ServerThread
from tests.support.rpc import error_info, field_violations, replayed

ASSET = "crm_credits"
OP = pb.Comparison

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[ServerThread]:
    s = ServerThread(database_url)
    yield s
    s.close()


def key() -> str:
    return uuid.uuid4().hex


def account(s: ServerThread, grant: int = 0, **grant_fields: Any) -> str:
    acct = f"cond-{uuid.uuid4().hex[:12]}"
    s.stub.CreateAccount(pb.CreateAccountRequest(account_id=acct))
    if grant:
        s.stub.Grant(
            pb.GrantRequest(
                account_id=acct, asset=ASSET, amount=grant, idempotency_key=key(), **grant_fields
            )
        )
    return acct


def balance(s: ServerThread, acct: str) -> pb.Balance:
    return s.stub.GetBalance(pb.GetBalanceRequest(account_id=acct, asset=ASSET)).balance


def at(s: ServerThread, seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(s.clock.t + timedelta(seconds=seconds))
    return ts


def expect(**fields: Any) -> pb.Precondition:
    return pb.Precondition(**fields)


def refused(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def test_every_change_gives_the_pair_one_more_version_and_every_reply_says_it(
    server: ServerThread,
) -> None:
    s = server.stub
    acct = account(server)
    assert balance(server, acct).version == 0  # never granted
    g = s.Grant(pb.GrantRequest(account_id=acct, asset=ASSET, amount=100, idempotency_key=key()))
    assert g.balance.version == 1
    r = s.Reserve(pb.ReserveRequest(account_id=acct, asset=ASSET, amount=30, idempotency_key=key()))
    assert r.balance.version == 2
    rid = r.reservation.reservation_id
    assert (
        s.Settle(
            pb.SettleRequest(reservation_id=rid, amount=10, idempotency_key=key())
        ).balance.version
        == 3
    )
    assert (
        s.Release(
            pb.ReleaseRequest(reservation_id=rid, amount=5, idempotency_key=key())
        ).balance.version
        == 4
    )
    assert (
        s.Refund(
            pb.RefundRequest(reservation_id=rid, amount=10, idempotency_key=key())
        ).balance.version
        == 5
    )
    assert (
        s.Charge(
            pb.ChargeRequest(account_id=acct, asset=ASSET, amount=1, idempotency_key=key())
        ).balance.version
        == 6
    )
    other = account(server, grant=10)
    group = s.ReserveGroup(
        pb.ReserveGroupRequest(
            legs=[
                pb.ReserveGroupLeg(account_id=acct, asset=ASSET, amount=2, leg_key="a"),
                pb.ReserveGroupLeg(account_id=acct, asset=ASSET, amount=3, leg_key="b"),
                pb.ReserveGroupLeg(account_id=other, asset=ASSET, amount=4, leg_key="c"),
            ],
            idempotency_key=key(),
        )
    )
    # One change per pair per command, however many legs or postings it took.
    got = {(b.account_id, b.version, b.reserved) for b in group.balances}
    assert got == {(acct, 7, 20), (other, 2, 4)}
    assert balance(server, acct).version == 7
    account_view = s.GetAccount(pb.GetAccountRequest(account_id=acct)).account
    assert [(b.asset, b.version) for b in account_view.balances] == [(ASSET, 7)]
    # A refusal changes nothing: no version.
    refused(
        lambda: s.Charge(
            pb.ChargeRequest(account_id=acct, asset=ASSET, amount=10**6, idempotency_key=key())
        )
    )
    assert balance(server, acct).version == 7
    assert server.run(verify(server.database_url)).ok


def test_a_write_conditional_on_the_version_it_read_applies_once_and_a_stale_one_never(
    server: ServerThread,
) -> None:
    s = server.stub
    acct = account(server, grant=100)
    seen = balance(server, acct)
    ok = s.Charge(
        pb.ChargeRequest(
            account_id=acct,
            asset=ASSET,
            amount=10,
            idempotency_key=key(),
            preconditions=[expect(version=seen.version)],
        )
    )
    assert ok.balance.version == seen.version + 1
    stale_key = key()
    stale = pb.ChargeRequest(
        account_id=acct,
        asset=ASSET,
        amount=10,
        idempotency_key=stale_key,
        preconditions=[expect(account_id=acct, asset=ASSET, version=seen.version)],
    )
    err = refused(lambda: s.Charge(stale))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(err)
    assert info.reason == "PRECONDITION_FAILED"
    meta = dict(info.metadata)
    assert meta["failed"] == "version" and meta["expected"] == str(seen.version)
    assert (meta["version"], meta["available"], meta["held"]) == (str(seen.version + 1), "90", "0")
    assert (meta["account_id"], meta["asset"]) == (acct, ASSET)
    assert balance(server, acct).available == 90  # nothing changed
    # The refusal is the key's first outcome: replayed as it was, whatever the pair is now.
    s.Charge(
        pb.ChargeRequest(
            account_id=acct,
            asset=ASSET,
            amount=10,
            idempotency_key=key(),
            preconditions=[expect(version=seen.version + 1)],
        )
    )
    with pytest.raises(grpc.RpcError) as again:
        s.Charge.with_call(stale)
    assert error_info(again.value).reason == "PRECONDITION_FAILED"
    assert dict(error_info(again.value).metadata)["version"] == str(seen.version + 1)
    assert replayed(again.value.trailing_metadata())
    # The precondition is part of the request: the same key without it is another request.
    changed = pb.ChargeRequest(account_id=acct, asset=ASSET, amount=10, idempotency_key=stale_key)
    assert error_info(refused(lambda: s.Charge(changed))).reason == "IDEMPOTENCY_KEY_REUSED"


@pytest.mark.parametrize(
    ("operator", "value", "passes"),
    [
        (OP.OPERATOR_GT, 49, True), (OP.OPERATOR_GT, 50, False),
        (OP.OPERATOR_GE, 50, True), (OP.OPERATOR_GE, 51, False),
        (OP.OPERATOR_EQ, 50, True), (OP.OPERATOR_EQ, 49, False),
        (OP.OPERATOR_LE, 50, True), (OP.OPERATOR_LE, 49, False),
        (OP.OPERATOR_LT, 51, True), (OP.OPERATOR_LT, 50, False),
    ],
)  # fmt: skip
def test_predicates_on_available(
    server: ServerThread, operator: pb.Comparison.Operator.ValueType, value: int, passes: bool
) -> None:
    acct = account(server, grant=50)
    req = pb.ReserveRequest(
        account_id=acct,
        asset=ASSET,
        amount=5,
        idempotency_key=key(),
        preconditions=[expect(available=pb.Comparison(operator=operator, value=value))],
    )
    if passes:
        assert server.stub.Reserve(req).balance.available == 45
    else:
        info = error_info(refused(lambda: server.stub.Reserve(req)))
        assert info.reason == "PRECONDITION_FAILED" and info.metadata["failed"] == "available"
        assert balance(server, acct).available == 50


def test_settle_release_refund_take_conditions_on_their_reservations_pair(
    server: ServerThread,
) -> None:
    s = server.stub
    acct = account(server, grant=50)
    r = s.Reserve(pb.ReserveRequest(account_id=acct, asset=ASSET, amount=20, idempotency_key=key()))
    rid = r.reservation.reservation_id
    held_20 = expect(held=pb.Comparison(operator=OP.OPERATOR_EQ, value=20))
    settled = s.Settle(
        pb.SettleRequest(
            reservation_id=rid, amount=5, idempotency_key=key(), preconditions=[held_20]
        )
    )
    assert settled.balance.reserved == 15
    err = refused(
        lambda: s.Release(
            pb.ReleaseRequest(reservation_id=rid, idempotency_key=key(), preconditions=[held_20])
        )
    )
    assert error_info(err).reason == "PRECONDITION_FAILED"
    assert error_info(err).metadata["held"] == "15"
    assert (
        s.GetReservation(pb.GetReservationRequest(reservation_id=rid)).reservation.remaining == 15
    )
    named = expect(account_id=acct, asset=ASSET, version=1)
    err = refused(
        lambda: s.Refund(
            pb.RefundRequest(
                reservation_id=rid, amount=1, idempotency_key=key(), preconditions=[named]
            )
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(err) == ["preconditions[0].account_id"]
    v = balance(server, acct).version
    out = s.Refund(
        pb.RefundRequest(
            reservation_id=rid, amount=5, idempotency_key=key(), preconditions=[expect(version=v)]
        )
    )
    assert out.balance.version == v + 1


def test_a_group_with_a_failed_precondition_holds_nothing(server: ServerThread) -> None:
    s = server.stub
    a, b = account(server, grant=10), account(server, grant=10)
    legs = [
        pb.ReserveGroupLeg(account_id=a, asset=ASSET, amount=5, leg_key="a"),
        pb.ReserveGroupLeg(account_id=b, asset=ASSET, amount=5, leg_key="b"),
    ]
    bad = [
        expect(account_id=a, asset=ASSET, version=1),
        expect(account_id=b, asset=ASSET, version=0),
    ]
    err = refused(
        lambda: s.ReserveGroup(
            pb.ReserveGroupRequest(legs=legs, idempotency_key=key(), preconditions=bad)
        )
    )
    assert error_info(err).reason == "PRECONDITION_FAILED"
    assert error_info(err).metadata["account_id"] == b
    assert balance(server, a).reserved == 0 and balance(server, b).reserved == 0
    good = [
        expect(account_id=a, asset=ASSET, version=1),
        expect(account_id=b, asset=ASSET, version=1),
    ]
    done = s.ReserveGroup(
        pb.ReserveGroupRequest(legs=legs, idempotency_key=key(), preconditions=good)
    )
    assert sorted(x.version for x in done.balances) == [2, 2]
    # A group's precondition must name one of its legs' pairs.
    unnamed = [expect(version=1)]
    err = refused(
        lambda: s.ReserveGroup(
            pb.ReserveGroupRequest(legs=legs, idempotency_key=key(), preconditions=unnamed)
        )
    )
    assert field_violations(err) == ["preconditions[0].account_id"]


def test_preconditions_in_a_batch_see_the_commands_before_them(server: ServerThread) -> None:
    acct = account(server, grant=10)
    v = balance(server, acct).version

    def charge(version: int) -> pb.BatchCommand:
        return pb.BatchCommand(
            charge=pb.ChargeRequest(
                account_id=acct,
                asset=ASSET,
                amount=1,
                idempotency_key=key(),
                preconditions=[expect(version=version)],
            )
        )

    out = server.stub.SubmitBatch(
        pb.SubmitBatchRequest(commands=[charge(v), charge(v + 1), charge(v + 1)])
    )
    assert [o.WhichOneof("outcome") for o in out.outcomes] == ["charge", "charge", "error"]
    assert out.outcomes[1].charge.balance.version == v + 2
    assert balance(server, acct).available == 8


def test_bad_preconditions_are_invalid_arguments_naming_the_field(server: ServerThread) -> None:
    acct = account(server, grant=10)

    def reserve(*items: pb.Precondition) -> list[str]:
        req = pb.ReserveRequest(
            account_id=acct, asset=ASSET, amount=1, idempotency_key=key(), preconditions=items
        )
        err = refused(lambda: server.stub.Reserve(req))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        return field_violations(err)

    assert reserve(expect()) == ["preconditions[0]"]
    assert reserve(expect(version=-1)) == ["preconditions[0].version"]
    assert reserve(expect(held=pb.Comparison(value=3))) == ["preconditions[0].held.operator"]
    assert reserve(expect(held=pb.Comparison(operator=OP.OPERATOR_EQ, value=-(2**63)))) == [
        "preconditions[0].held.value"
    ]
    assert reserve(expect(account_id="someone-else", asset=ASSET, version=1)) == [
        "preconditions[0].account_id"
    ]
    assert reserve(expect(version=1), expect(version=1)) == ["preconditions[1]"]
    many = [expect(version=1)] * (limits.PRECONDITIONS_MAX + 1)
    assert reserve(*many) == ["preconditions"]
    assert balance(server, acct).reserved == 0


def test_a_pairs_version_counts_deadlines_the_same_whether_a_read_a_write_or_the_sweeper_applied_them(
    server: ServerThread,
) -> None:
    s = server.stub
    acct = account(server, grant=10, expires_at=at(server, 3600))  # version 1
    s.Grant(pb.GrantRequest(account_id=acct, asset=ASSET, amount=5, idempotency_key=key()))  # 2
    r = s.Reserve(
        pb.ReserveRequest(
            account_id=acct,
            asset=ASSET,
            amount=3,
            idempotency_key=key(),
            ttl=duration_pb2.Duration(seconds=60),
        )
    )  # 3
    assert r.balance.version == 3
    server.advance(timedelta(seconds=61))
    # The hold's expiry is a change: a read applies it in memory and says so...
    seen = balance(server, acct)
    assert (seen.version, seen.reserved, seen.available) == (4, 0, 15)
    assert balance(server, acct).version == 4  # ...the same at every read
    # ...and a write conditional on what the read said applies, though nothing persisted it.
    ok = s.Charge(
        pb.ChargeRequest(
            account_id=acct,
            asset=ASSET,
            amount=1,
            idempotency_key=key(),
            preconditions=[expect(version=seen.version)],
        )
    )
    assert ok.balance.version == 5
    # A lot expiry is one change too; the sweeper writes the version every reader saw.
    server.advance(timedelta(hours=1))
    seen = balance(server, acct)
    assert (seen.version, seen.available) == (6, 5)
    server.sweep()
    assert balance(server, acct).version == 6
    ok = s.Charge(
        pb.ChargeRequest(
            account_id=acct,
            asset=ASSET,
            amount=1,
            idempotency_key=key(),
            preconditions=[expect(version=6)],
        )
    )
    assert ok.balance.version == 7
    # A deadline that came after the read makes the read's version stale.
    acct2 = account(server, grant=10, expires_at=at(server, 60))
    s.Grant(pb.GrantRequest(account_id=acct2, asset=ASSET, amount=5, idempotency_key=key()))
    seen = balance(server, acct2)
    assert seen.version == 2
    server.advance(timedelta(seconds=60))
    err = refused(
        lambda: s.Charge(
            pb.ChargeRequest(
                account_id=acct2,
                asset=ASSET,
                amount=1,
                idempotency_key=key(),
                preconditions=[expect(version=2)],
            )
        )
    )
    info = error_info(err)
    assert info.reason == "PRECONDITION_FAILED"
    assert (info.metadata["version"], info.metadata["available"]) == ("3", "5")
    assert server.run(verify(server.database_url)).ok


def test_a_request_without_preconditions_keeps_the_fingerprint_keys_were_stored_with() -> None:
    plain = c.Reserve("caller", "k", "acct", ASSET, 5)
    assert "preconditions" not in plain._fields()
    guarded = c.Reserve("caller", "k", "acct", ASSET, 5, preconditions=(c.Precondition(version=3),))
    assert guarded.fingerprint() != plain.fingerprint()
    assert (
        guarded.fingerprint()
        != c.Reserve(
            "caller", "k", "acct", ASSET, 5, preconditions=(c.Precondition(version=4),)
        ).fingerprint()
    )
