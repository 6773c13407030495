"""The two products of the mission, end to end through the real stub."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from creditledger.v1.ledger_pb2_grpc import LedgerServiceAsyncStub

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb

from tests.conftest import key, new_account
from tests.support.rpc import error_info
from tests.support.verify import assert_ledger_consistent


async def balance(stub: LedgerServiceAsyncStub, account_id: str, asset: str) -> pb.Balance:
    return (await stub.GetBalance(pb.GetBalanceRequest(account_id=account_id, asset=asset))).balance


async def test_email_opens_until_credits_run_out(
    stub: LedgerServiceAsyncStub, database_url: str
) -> None:
    acct = await new_account(stub, "email", grant=30, asset="image_opens")
    for _ in range(30):
        await stub.Charge(
            pb.ChargeRequest(account_id=acct, asset="image_opens", amount=1, idempotency_key=key())
        )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Charge(
            pb.ChargeRequest(account_id=acct, asset="image_opens", amount=1, idempotency_key=key())
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(err.value)
    assert info.reason == "INSUFFICIENT_CREDITS"
    assert info.domain == "creditledger.v1"
    assert info.metadata["available"] == "0" and info.metadata["requested"] == "1"
    bal = await balance(stub, acct, "image_opens")
    assert (bal.available, bal.reserved, bal.settled, bal.granted) == (0, 0, 30, 30)
    await assert_ledger_consistent(database_url)


async def _crm_run(
    stub: LedgerServiceAsyncStub, acct: str
) -> tuple[pb.Reservation, pb.Reservation]:
    """The automation run over 3,000 customers: executions and their emails, held up front."""
    executions = await stub.Reserve(
        pb.ReserveRequest(account_id=acct, asset="crm_credits", amount=3000, idempotency_key=key())
    )
    emails = await stub.Reserve(
        pb.ReserveRequest(account_id=acct, asset="crm_credits", amount=3000, idempotency_key=key())
    )
    await stub.Settle(
        pb.SettleRequest(
            reservation_id=executions.reservation.reservation_id,
            amount=3000,
            final=True,
            idempotency_key=key(),
        )
    )
    return executions.reservation, emails.reservation


async def test_crm_all_delivered(stub: LedgerServiceAsyncStub, database_url: str) -> None:
    acct = await new_account(stub, "crm", grant=10_000)
    _, emails = await _crm_run(stub, acct)
    await stub.Settle(
        pb.SettleRequest(
            reservation_id=emails.reservation_id, amount=3000, final=True, idempotency_key=key()
        )
    )
    bal = await balance(stub, acct, "crm_credits")
    assert (bal.available, bal.reserved, bal.settled) == (4000, 0, 6000)
    await assert_ledger_consistent(database_url)


async def test_crm_failed_deliveries_settled_short(stub: LedgerServiceAsyncStub) -> None:
    acct = await new_account(stub, "crm", grant=10_000)
    _, emails = await _crm_run(stub, acct)
    done = await stub.Settle(
        pb.SettleRequest(
            reservation_id=emails.reservation_id, amount=2000, final=True, idempotency_key=key()
        )
    )
    assert done.reservation.state == pb.Reservation.STATE_CLOSED
    assert (done.reservation.settled, done.reservation.released) == (2000, 1000)
    bal = await balance(stub, acct, "crm_credits")
    assert (bal.available, bal.reserved) == (5000, 0)


async def test_crm_failed_deliveries_refunded_gradually(
    stub: LedgerServiceAsyncStub, database_url: str
) -> None:
    acct = await new_account(stub, "crm", grant=10_000)
    _, emails = await _crm_run(stub, acct)
    await stub.Settle(
        pb.SettleRequest(
            reservation_id=emails.reservation_id, amount=3000, final=True, idempotency_key=key()
        )
    )
    assert (await balance(stub, acct, "crm_credits")).available == 4000
    for part in (100, 400, 250, 250):  # failures confirmed one batch at a time
        await stub.Refund(
            pb.RefundRequest(
                reservation_id=emails.reservation_id,
                amount=part,
                idempotency_key=key(),
                reason="bounced",
            )
        )
    bal = await balance(stub, acct, "crm_credits")
    assert (bal.available, bal.settled, bal.refunded) == (5000, 6000, 1000)
    res = await stub.GetReservation(pb.GetReservationRequest(reservation_id=emails.reservation_id))
    assert (res.reservation.settled, res.reservation.refunded) == (3000, 1000)
    await assert_ledger_consistent(database_url)


async def test_crm_insufficient_credits_changes_nothing(stub: LedgerServiceAsyncStub) -> None:
    acct = await new_account(stub, "crm", grant=2000)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Reserve(
            pb.ReserveRequest(
                account_id=acct, asset="crm_credits", amount=3000, idempotency_key=key()
            )
        )
    assert error_info(err.value).reason == "INSUFFICIENT_CREDITS"
    bal = await balance(stub, acct, "crm_credits")
    assert (bal.available, bal.reserved, bal.settled) == (2000, 0, 0)
    entries = await stub.ListEntries(pb.ListEntriesRequest(account_id=acct))
    assert [e.movement for e in entries.entries] == [pb.Entry.MOVEMENT_GRANT]


async def test_crm_and_sms_credits_are_separate(stub: LedgerServiceAsyncStub) -> None:
    acct = await new_account(stub, "crm", grant=100)
    await stub.Grant(
        pb.GrantRequest(account_id=acct, asset="sms_credits", amount=5, idempotency_key=key())
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Charge(
            pb.ChargeRequest(account_id=acct, asset="sms_credits", amount=6, idempotency_key=key())
        )
    assert error_info(err.value).reason == "INSUFFICIENT_CREDITS"
    got = await stub.GetAccount(pb.GetAccountRequest(account_id=acct))
    assert {b.asset: b.available for b in got.account.balances} == {
        "crm_credits": 100,
        "sms_credits": 5,
    }
