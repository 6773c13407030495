"""Retention through the real server: refused keys kept shorter, closed reservations archived.

docs/operations.md ("Retention") documents both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from creditledger.v1.ledger_pb2_grpc import LedgerServiceAsyncStub

import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from creditledger.v1 import ledger_pb2_grpc

from ledger.app import App
from ledger.config import Config
from ledger.storage.verify import verify
from tests.conftest import key, new_account
from tests.support.db import TestDatabase
from tests.support.process import REPO
from tests.support.rpc import error_info

pytestmark = pytest.mark.timeout(120)


async def _kept_for(database_url: str, idem_key: str) -> timedelta:
    conn = await asyncpg.connect(database_url)
    try:
        kept: timedelta = await conn.fetchval(
            "SELECT expires_at - created_at FROM idempotency WHERE key = $1", idem_key
        )
    finally:
        await conn.close()
    return kept


async def test_a_refused_request_key_is_kept_shorter_than_an_applied_one(
    stub: LedgerServiceAsyncStub, database_url: str
) -> None:
    acct = await new_account(stub, grant=5)
    applied, refused = key(), key()
    await stub.Charge(
        pb.ChargeRequest(account_id=acct, asset="crm_credits", amount=1, idempotency_key=applied)
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Charge(
            pb.ChargeRequest(
                account_id=acct, asset="crm_credits", amount=500, idempotency_key=refused
            )
        )
    assert error_info(err.value).reason == "INSUFFICIENT_CREDITS"
    defaults = Config()
    assert await _kept_for(database_url, applied) == timedelta(
        days=defaults.idempotency_retention_days
    )
    assert await _kept_for(database_url, refused) == timedelta(
        days=defaults.idempotency_refused_retention_days
    )
    # Inside its retention the refusal still replays (and does not run again).
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await stub.Charge(
            pb.ChargeRequest(
                account_id=acct, asset="crm_credits", amount=500, idempotency_key=refused
            )
        )
    assert error_info(again.value).reason == "INSUFFICIENT_CREDITS"


@pytest.fixture
async def own_server() -> AsyncIterator[tuple[LedgerServiceAsyncStub, str]]:
    """A server on a database of its own: archiving touches every closed reservation."""
    db = await TestDatabase.create("ledger_archive")
    app = App(Config(listen="127.0.0.1:0", database_url=db.url, metrics_listen="", drain_s=1.0))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            yield ledger_pb2_grpc.LedgerServiceStub(channel), db.url
    finally:
        await app.stop()
        await db.drop()


async def test_archived_reservations_still_answer_and_verify_still_holds(
    own_server: tuple[LedgerServiceAsyncStub, str],
) -> None:
    stub, url = own_server
    acct = await new_account(stub, grant=100)
    closed = await stub.Reserve(
        pb.ReserveRequest(account_id=acct, asset="crm_credits", amount=10, idempotency_key=key())
    )
    cid = closed.reservation.reservation_id
    await stub.Settle(
        pb.SettleRequest(reservation_id=cid, amount=4, final=True, idempotency_key=key())
    )
    still_open = await stub.Reserve(
        pb.ReserveRequest(account_id=acct, asset="crm_credits", amount=7, idempotency_key=key())
    )
    oid = still_open.reservation.reservation_id
    conn = await asyncpg.connect(url)
    try:
        # Age them as a year would: the archiver picks by expiry.
        await conn.execute("UPDATE reservations SET expires_at = expires_at - interval '400 days'")
        await conn.execute(
            "UPDATE reservations SET expires_at = expires_at + interval '400 days'"
            " WHERE reservation_id = $1::uuid",
            oid,
        )
    finally:
        await conn.close()
    done = subprocess.run(
        [sys.executable, "-m", "ledger", "archive", "reservations", "--database-url", url,
         "--older-than-days", "365"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "1 archived" in done.stdout, done.stdout

    got = await stub.GetReservation(pb.GetReservationRequest(reservation_id=cid))
    assert got.reservation.state == pb.Reservation.STATE_CLOSED
    assert got.reservation.settled == 4
    assert (await stub.GetReservation(pb.GetReservationRequest(reservation_id=oid))).reservation
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Refund(pb.RefundRequest(reservation_id=cid, amount=1, idempotency_key=key()))
    assert error_info(err.value).reason == "RESERVATION_NOT_FOUND"
    report = await verify(url)
    assert report.ok, report.violations
    assert report.counts["reservations_archive"] == 1
