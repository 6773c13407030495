"""Every RPC, and every error reason a caller can get, through the real stub."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from creditledger.v1.ledger_pb2_grpc import LedgerServiceAsyncStub

import uuid
from datetime import timedelta

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from google.protobuf import duration_pb2

from tests.conftest import RunningServer, key, new_account
from tests.support.rpc import error_info, field_violations


async def expect_error(call: object, code: grpc.StatusCode, reason: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    assert err.value.code() == code, err.value.details()
    assert error_info(err.value).reason == reason
    assert error_info(err.value).domain == "creditledger.v1"
    return err.value


async def test_create_and_get_account(stub: LedgerServiceAsyncStub) -> None:
    account_id = f"tenant-42:customer-{uuid.uuid4().hex[:6]}"
    created = await stub.CreateAccount(
        pb.CreateAccountRequest(account_id=account_id, metadata={"plan": "pro"})
    )
    assert created.account.account_id == account_id
    assert created.account.metadata["plan"] == "pro"
    got = await stub.GetAccount(pb.GetAccountRequest(account_id=account_id))
    assert got.account.metadata == created.account.metadata
    assert list(got.account.balances) == []
    await expect_error(
        stub.CreateAccount(pb.CreateAccountRequest(account_id=account_id)),
        grpc.StatusCode.ALREADY_EXISTS,
        "ACCOUNT_EXISTS",
    )


async def test_grant_returns_balance_and_lot(stub: LedgerServiceAsyncStub) -> None:
    acct = await new_account(stub)
    resp = await stub.Grant(
        pb.GrantRequest(
            account_id=acct,
            asset="crm_credits",
            amount=500,
            idempotency_key=key(),
            source="purchase",
        )
    )
    assert (resp.balance.available, resp.balance.granted) == (500, 500)
    assert (resp.lot.amount, resp.lot.remaining, resp.lot.priority, resp.lot.source) == (
        500,
        500,
        100,
        "purchase",
    )
    assert not resp.lot.HasField("expires_at")


async def test_reserve_settle_release_refund_lifecycle(stub: LedgerServiceAsyncStub) -> None:
    acct = await new_account(stub, grant=100)
    r = await stub.Reserve(
        pb.ReserveRequest(
            account_id=acct,
            asset="crm_credits",
            amount=60,
            idempotency_key=key(),
            metadata={"run": "7"},
        )
    )
    rid = r.reservation.reservation_id
    assert r.reservation.state == pb.Reservation.STATE_OPEN
    assert (r.balance.available, r.balance.reserved) == (40, 60)
    default_ttl = r.reservation.expires_at.ToDatetime() - r.reservation.created_at.ToDatetime()
    assert default_ttl == timedelta(minutes=15)
    s = await stub.Settle(pb.SettleRequest(reservation_id=rid, amount=20, idempotency_key=key()))
    assert (s.reservation.settled, s.reservation.remaining, s.balance.reserved) == (20, 40, 40)
    rel = await stub.Release(
        pb.ReleaseRequest(reservation_id=rid, amount=10, idempotency_key=key())
    )
    assert (rel.reservation.released, rel.reservation.remaining, rel.balance.available) == (
        10,
        30,
        50,
    )
    rel = await stub.Release(
        pb.ReleaseRequest(reservation_id=rid, idempotency_key=key())
    )  # 0 = all
    assert rel.reservation.state == pb.Reservation.STATE_CLOSED
    assert (rel.balance.available, rel.balance.reserved) == (80, 0)
    ref = await stub.Refund(
        pb.RefundRequest(reservation_id=rid, amount=5, idempotency_key=key(), reason="x")
    )
    assert (ref.reservation.refunded, ref.balance.available, ref.balance.refunded) == (5, 85, 5)
    got = await stub.GetReservation(pb.GetReservationRequest(reservation_id=rid))
    assert got.reservation.metadata["run"] == "7"
    assert (
        got.reservation.amount,
        got.reservation.settled,
        got.reservation.released,
        got.reservation.refunded,
    ) == (60, 20, 40, 5)


async def test_settle_zero_final_closes(stub: LedgerServiceAsyncStub) -> None:
    acct = await new_account(stub, grant=10)
    r = await stub.Reserve(
        pb.ReserveRequest(account_id=acct, asset="crm_credits", amount=10, idempotency_key=key())
    )
    s = await stub.Settle(
        pb.SettleRequest(
            reservation_id=r.reservation.reservation_id, amount=0, final=True, idempotency_key=key()
        )
    )
    assert s.reservation.state == pb.Reservation.STATE_CLOSED
    assert (s.reservation.settled, s.reservation.released, s.balance.available) == (0, 10, 10)


async def test_charge_is_settled_and_closed(stub: LedgerServiceAsyncStub) -> None:
    acct = await new_account(stub, grant=10)
    c = await stub.Charge(
        pb.ChargeRequest(account_id=acct, asset="crm_credits", amount=3, idempotency_key=key())
    )
    assert c.reservation.state == pb.Reservation.STATE_CLOSED
    assert (c.reservation.amount, c.reservation.settled, c.reservation.remaining) == (3, 3, 0)
    assert (c.balance.available, c.balance.settled) == (7, 3)
    ref = await stub.Refund(
        pb.RefundRequest(
            reservation_id=c.reservation.reservation_id, amount=3, idempotency_key=key()
        )
    )
    assert ref.balance.available == 10


async def test_get_balance_of_unknown_asset_is_zeros(stub: LedgerServiceAsyncStub) -> None:
    acct = await new_account(stub)
    got = await stub.GetBalance(pb.GetBalanceRequest(account_id=acct, asset="never_granted"))
    assert (
        got.balance.account_id,
        got.balance.asset,
        got.balance.available,
        got.balance.granted,
    ) == (acct, "never_granted", 0, 0)


async def test_list_entries_newest_first_paginated(stub: LedgerServiceAsyncStub) -> None:
    acct = await new_account(stub, grant=10)
    for _ in range(4):
        await stub.Charge(
            pb.ChargeRequest(account_id=acct, asset="crm_credits", amount=1, idempotency_key=key())
        )
    await stub.Grant(
        pb.GrantRequest(account_id=acct, asset="sms_credits", amount=3, idempotency_key=key())
    )
    seen: list[pb.Entry] = []
    token = ""
    pages = 0
    while True:
        page = await stub.ListEntries(
            pb.ListEntriesRequest(account_id=acct, page_size=2, page_token=token)
        )
        pages += 1
        seen.extend(page.entries)
        token = page.next_page_token
        if not token:
            break
    assert pages == 3 and len(seen) == 6  # 1 grant + 4 charges + 1 sms grant (customer side only)
    ids = [int(e.entry_id) for e in seen]
    assert ids == sorted(ids, reverse=True)
    assert seen[0].asset == "sms_credits" and seen[0].movement == pb.Entry.MOVEMENT_GRANT
    assert seen[-1].movement == pb.Entry.MOVEMENT_GRANT and seen[-1].amount == 10
    charges = [e for e in seen if e.movement == pb.Entry.MOVEMENT_SETTLE]
    assert all(e.amount == -1 and e.reservation_id and e.lot_id for e in charges)
    only_crm = await stub.ListEntries(pb.ListEntriesRequest(account_id=acct, asset="crm_credits"))
    assert {e.asset for e in only_crm.entries} == {"crm_credits"} and len(only_crm.entries) == 5
    # A token is bound to its query.
    first = await stub.ListEntries(pb.ListEntriesRequest(account_id=acct, page_size=1))
    err = await expect_error(
        stub.ListEntries(
            pb.ListEntriesRequest(
                account_id=acct, asset="crm_credits", page_token=first.next_page_token
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert field_violations(err) == ["page_token"]


async def test_not_found_reasons(stub: LedgerServiceAsyncStub) -> None:
    ghost = f"ghost-{uuid.uuid4().hex[:8]}"
    missing = str(uuid.uuid4())
    await expect_error(
        stub.GetAccount(pb.GetAccountRequest(account_id=ghost)),
        grpc.StatusCode.NOT_FOUND,
        "ACCOUNT_NOT_FOUND",
    )
    await expect_error(
        stub.Grant(pb.GrantRequest(account_id=ghost, asset="a", amount=1, idempotency_key=key())),
        grpc.StatusCode.NOT_FOUND,
        "ACCOUNT_NOT_FOUND",
    )
    await expect_error(
        stub.GetBalance(pb.GetBalanceRequest(account_id=ghost, asset="a")),
        grpc.StatusCode.NOT_FOUND,
        "ACCOUNT_NOT_FOUND",
    )
    await expect_error(
        stub.ListEntries(pb.ListEntriesRequest(account_id=ghost)),
        grpc.StatusCode.NOT_FOUND,
        "ACCOUNT_NOT_FOUND",
    )
    await expect_error(
        stub.GetReservation(pb.GetReservationRequest(reservation_id=missing)),
        grpc.StatusCode.NOT_FOUND,
        "RESERVATION_NOT_FOUND",
    )
    for call in (
        stub.Settle(pb.SettleRequest(reservation_id=missing, amount=1, idempotency_key=key())),
        stub.Release(pb.ReleaseRequest(reservation_id=missing, idempotency_key=key())),
        stub.Refund(pb.RefundRequest(reservation_id=missing, amount=1, idempotency_key=key())),
    ):
        await expect_error(call, grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND")
    await expect_error(
        stub.GetReservationGroup(pb.GetReservationGroupRequest(group_id=missing)),
        grpc.StatusCode.NOT_FOUND,
        "RESERVATION_GROUP_NOT_FOUND",
    )


async def test_closed_and_cap_reasons(stub: LedgerServiceAsyncStub) -> None:
    acct = await new_account(stub, grant=100)
    r = await stub.Reserve(
        pb.ReserveRequest(account_id=acct, asset="crm_credits", amount=10, idempotency_key=key())
    )
    rid = r.reservation.reservation_id
    err = await expect_error(
        stub.Settle(pb.SettleRequest(reservation_id=rid, amount=11, idempotency_key=key())),
        grpc.StatusCode.FAILED_PRECONDITION,
        "AMOUNT_EXCEEDS_REMAINING",
    )
    assert error_info(err).metadata["remaining"] == "10"
    await expect_error(
        stub.Release(pb.ReleaseRequest(reservation_id=rid, amount=11, idempotency_key=key())),
        grpc.StatusCode.FAILED_PRECONDITION,
        "AMOUNT_EXCEEDS_REMAINING",
    )
    await expect_error(
        stub.Refund(pb.RefundRequest(reservation_id=rid, amount=1, idempotency_key=key())),
        grpc.StatusCode.FAILED_PRECONDITION,
        "AMOUNT_EXCEEDS_SETTLED",
    )
    await stub.Settle(
        pb.SettleRequest(reservation_id=rid, amount=4, final=True, idempotency_key=key())
    )
    await expect_error(
        stub.Settle(pb.SettleRequest(reservation_id=rid, amount=1, idempotency_key=key())),
        grpc.StatusCode.FAILED_PRECONDITION,
        "RESERVATION_CLOSED",
    )
    await expect_error(
        stub.Release(pb.ReleaseRequest(reservation_id=rid, idempotency_key=key())),
        grpc.StatusCode.FAILED_PRECONDITION,
        "RESERVATION_CLOSED",
    )
    # Refund caps: never more than settled in total, over many partial refunds.
    await stub.Refund(pb.RefundRequest(reservation_id=rid, amount=3, idempotency_key=key()))
    err = await expect_error(
        stub.Refund(pb.RefundRequest(reservation_id=rid, amount=2, idempotency_key=key())),
        grpc.StatusCode.FAILED_PRECONDITION,
        "AMOUNT_EXCEEDS_SETTLED",
    )
    assert error_info(err).metadata["refundable"] == "1"
    await stub.Refund(pb.RefundRequest(reservation_id=rid, amount=1, idempotency_key=key()))
    await expect_error(
        stub.Refund(pb.RefundRequest(reservation_id=rid, amount=1, idempotency_key=key())),
        grpc.StatusCode.FAILED_PRECONDITION,
        "AMOUNT_EXCEEDS_SETTLED",
    )
    bal = await stub.GetBalance(pb.GetBalanceRequest(account_id=acct, asset="crm_credits"))
    assert (bal.balance.available, bal.balance.settled, bal.balance.refunded) == (100, 4, 4)


async def test_amount_limit_is_named(stub: LedgerServiceAsyncStub) -> None:
    acct = await new_account(stub)
    err = await expect_error(
        stub.Grant(
            pb.GrantRequest(account_id=acct, asset="big", amount=10**15 + 1, idempotency_key=key())
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert "AMOUNT_MAX" in (err.details() or "")
    assert field_violations(err) == ["amount"]


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (pb.GrantRequest(account_id="", asset="a", amount=1, idempotency_key="k"), ["account_id"]),
        (
            pb.GrantRequest(account_id="a b", asset="A", amount=0, idempotency_key=""),
            ["account_id", "asset", "amount", "idempotency_key"],
        ),
        (
            pb.GrantRequest(account_id="@issuance", asset="a", amount=1, idempotency_key="k"),
            ["account_id"],
        ),
        (
            pb.GrantRequest(account_id="a", asset="a", amount=-5, idempotency_key="k\n"),
            ["amount", "idempotency_key"],
        ),
        (
            pb.GrantRequest(account_id="a", asset="a", amount=1, idempotency_key="k", priority=-1),
            ["priority"],
        ),
        (
            pb.ReserveRequest(
                account_id="a",
                asset="a",
                amount=1,
                idempotency_key="k",
                ttl=duration_pb2.Duration(seconds=31 * 86400),
            ),
            ["ttl"],
        ),
        (
            pb.ReserveRequest(account_id="a", asset="a", amount=1, idempotency_key="k" * 129),
            ["idempotency_key"],
        ),
        (
            pb.SettleRequest(reservation_id="nope", amount=0, idempotency_key="k"),
            ["reservation_id", "amount"],
        ),
        (
            pb.ChargeRequest(
                account_id="a",
                asset="a",
                amount=1,
                idempotency_key="k",
                metadata={f"k{i}": "v" for i in range(33)},
            ),
            ["metadata"],
        ),
        (pb.ReserveGroupRequest(legs=[], idempotency_key="k"), ["legs"]),
        (pb.ListEntriesRequest(account_id="a", page_size=1001), ["page_size"]),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    stub: LedgerServiceAsyncStub, request_: object, fields: list[str]
) -> None:
    method: Any = {
        pb.GrantRequest: stub.Grant,
        pb.ReserveRequest: stub.Reserve,
        pb.SettleRequest: stub.Settle,
        pb.ChargeRequest: stub.Charge,
        pb.ReserveGroupRequest: stub.ReserveGroup,
        pb.ListEntriesRequest: stub.ListEntries,
    }[type(request_)]
    err = await expect_error(method(request_), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert field_violations(err) == fields


async def test_reservation_read_sees_expiry_at_once(
    stub: LedgerServiceAsyncStub, ledger_server: RunningServer
) -> None:
    acct = await new_account(stub, grant=10)
    r = await stub.Reserve(
        pb.ReserveRequest(
            account_id=acct,
            asset="crm_credits",
            amount=4,
            idempotency_key=key(),
            ttl=duration_pb2.Duration(seconds=60),
        )
    )
    await ledger_server.app.sweeper.stop()  # nothing but the read itself may see the expiry
    try:
        ledger_server.clock.advance(timedelta(seconds=61))
        got = await stub.GetReservation(
            pb.GetReservationRequest(reservation_id=r.reservation.reservation_id)
        )
        assert got.reservation.state == pb.Reservation.STATE_EXPIRED
        assert (got.reservation.released, got.reservation.remaining) == (4, 0)
    finally:
        ledger_server.app.sweeper.start()
