"""ListReservations: an account's reservations, oldest first, filtered, a page at a time."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from google.protobuf import duration_pb2

from ledger.domain import limits
from tests.conftest import RunningServer, key, new_account

if TYPE_CHECKING:
    from creditledger.v1.ledger_pb2_grpc import LedgerServiceAsyncStub
from tests.support.rpc import error_info

pytestmark = pytest.mark.timeout(60)

ANY = pb.Reservation.STATE_UNSPECIFIED
OPEN, CLOSED, EXPIRED = (
    pb.Reservation.STATE_OPEN,
    pb.Reservation.STATE_CLOSED,
    pb.Reservation.STATE_EXPIRED,
)


async def _reserve(
    stub: LedgerServiceAsyncStub, account: str, amount: int, ttl_s: int = 900
) -> str:
    resp = await stub.Reserve(
        pb.ReserveRequest(
            account_id=account,
            asset="crm_credits",
            amount=amount,
            idempotency_key=key(),
            ttl=duration_pb2.Duration(seconds=ttl_s),
        )
    )
    return str(resp.reservation.reservation_id)


async def _all(
    stub: LedgerServiceAsyncStub,
    account: str,
    state: pb.Reservation.State.ValueType = pb.Reservation.STATE_UNSPECIFIED,
    page_size: int = 0,
    asset: str = "",
) -> tuple[list[pb.Reservation], int]:
    """Every reservation the pages hold, and how many pages it took."""
    out: list[pb.Reservation] = []
    token, pages = "", 0
    while True:
        page = await stub.ListReservations(
            pb.ListReservationsRequest(
                account_id=account, asset=asset, state=state, page_size=page_size, page_token=token
            )
        )
        pages += 1
        out.extend(page.reservations)
        token = page.next_page_token
        if not token:
            return out, pages


async def test_open_reservations_page_by_page_oldest_first(stub: LedgerServiceAsyncStub) -> None:
    account = await new_account(stub, "lr", grant=1000)
    held = [await _reserve(stub, account, 10) for _ in range(5)]
    settled = held.pop(1)
    await stub.Settle(pb.SettleRequest(reservation_id=settled, amount=10, idempotency_key=key()))

    found, pages = await _all(stub, account, OPEN, page_size=2)
    assert [r.reservation_id for r in found] == held
    assert pages == 2  # 2 + 2, and the second page knows it is the last
    assert all(r.state == OPEN for r in found)
    closed, _ = await _all(stub, account, CLOSED)
    assert [r.reservation_id for r in closed] == [settled]
    every, _ = await _all(stub, account)
    assert {r.reservation_id for r in every} == {*held, settled}
    assert (await _all(stub, account, OPEN, asset="email_opens"))[0] == []


async def test_an_open_reservation_past_its_expiry_lists_as_expired(
    stub: LedgerServiceAsyncStub, ledger_server: RunningServer
) -> None:
    account = await new_account(stub, "lr", grant=100)
    rid = await _reserve(stub, account, 10, ttl_s=60)
    # Past expiry on the server's clock, whether or not the sweeper has run yet.
    ledger_server.clock.advance(timedelta(seconds=120))
    assert (await _all(stub, account, OPEN))[0] == []
    expired, _ = await _all(stub, account, EXPIRED)
    assert [(r.reservation_id, r.state, r.released) for r in expired] == [(rid, EXPIRED, 10)]


async def test_every_token_the_server_makes_is_accepted_back_even_for_the_longest_query(
    stub: LedgerServiceAsyncStub,
) -> None:
    account = "L" * (limits.ACCOUNT_ID_LEN_MAX - 11) + uuid.uuid4().hex[:11]
    await stub.CreateAccount(pb.CreateAccountRequest(account_id=account))
    asset = "a" * limits.ASSET_LEN_MAX
    await stub.Grant(
        pb.GrantRequest(account_id=account, asset=asset, amount=10, idempotency_key=key())
    )
    for _ in range(3):
        await stub.Reserve(
            pb.ReserveRequest(account_id=account, asset=asset, amount=1, idempotency_key=key())
        )
    found, pages = await _all(stub, account, OPEN, page_size=1, asset=asset)
    assert len(found) == 3 and pages == 3


def _forge(token: str, **changes: object) -> str:
    """The token with its cursor changed: t (created_at in microseconds), r (the id)."""
    data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    version, query, position, reservation_id = data
    cursor = {"t": position, "r": reservation_id, **changes}
    raw = json.dumps([version, query, cursor["t"], cursor["r"]], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


async def test_a_forged_or_foreign_token_is_invalid_argument_never_internal(
    stub: LedgerServiceAsyncStub,
) -> None:
    account = await new_account(stub, "lr", grant=100)
    other = await new_account(stub, "lr", grant=100)
    for _ in range(2):
        await _reserve(stub, account, 1)
    first = await stub.ListReservations(pb.ListReservationsRequest(account_id=account, page_size=1))
    token = first.next_page_token
    assert token
    entries_token = base64.urlsafe_b64encode(
        json.dumps({"b": 5, "a": account, "s": ""}).encode()
    ).decode()
    forged = [
        ("another account", other, ANY, token),
        ("another state", account, OPEN, token),
        ("garbage", account, ANY, "not-a-token"),
        ("not base64 json", account, ANY, base64.urlsafe_b64encode(b"\xff\xfe").decode()),
        ("a ListEntries token", account, ANY, entries_token),
        ("too long", account, ANY, "A" * (limits.PAGE_TOKEN_LEN_MAX + 1)),
        ("a position that is no uuid", account, ANY, _forge(token, r="1; DROP TABLE x")),
        ("a position out of range", account, ANY, _forge(token, t=10**30)),
        ("a position past year 9999", account, ANY, _forge(token, t=2**62)),
        ("an id of id characters that is no uuid", account, ANY, _forge(token, r="abc-def")),
        ("a negative position", account, ANY, _forge(token, t=-1)),
        ("a position of the wrong type", account, ANY, _forge(token, t="2026")),
        ("a boolean position", account, ANY, _forge(token, t=True)),
        ("a list", account, ANY, base64.urlsafe_b64encode(b"[1,2]").decode()),
        ("deep nesting", account, ANY, base64.urlsafe_b64encode(b"[" * 150 + b"]" * 150).decode()),
    ]
    for name, account_id, state, bad in forged:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListReservations(
                pb.ListReservationsRequest(account_id=account_id, state=state, page_token=bad)
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert error_info(caught.value).reason == "INVALID_ARGUMENT", name
        assert "page_token" in (caught.value.details() or ""), name


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ListReservationsRequest(account_id=""), "account_id"),
        (pb.ListReservationsRequest(account_id="ok", asset="Bad Asset"), "asset"),
        (
            pb.ListReservationsRequest(account_id="ok", page_size=limits.PAGE_SIZE_MAX + 1),
            "page_size",
        ),
        (pb.ListReservationsRequest(account_id="ok", page_size=-1), "page_size"),
        (pb.ListReservationsRequest(account_id="ok", state=7), "state"),  # type: ignore[arg-type]
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    stub: LedgerServiceAsyncStub, request_: pb.ListReservationsRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListReservations(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (caught.value.details() or "")


async def test_an_unknown_account_is_not_found(stub: LedgerServiceAsyncStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListReservations(
            pb.ListReservationsRequest(account_id=f"nobody-{uuid.uuid4().hex[:8]}")
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(caught.value).reason == "ACCOUNT_NOT_FOUND"


async def test_list_entries_also_accepts_back_its_token_for_the_longest_query(
    stub: LedgerServiceAsyncStub,
) -> None:
    # ListEntries binds its token to the query by carrying account_id and asset:
    # for the longest of both it must still fit PAGE_TOKEN_LEN_MAX.
    account = "E" * (limits.ACCOUNT_ID_LEN_MAX - 11) + uuid.uuid4().hex[:11]
    asset = "b" * limits.ASSET_LEN_MAX
    await stub.CreateAccount(pb.CreateAccountRequest(account_id=account))
    for _ in range(3):
        await stub.Grant(
            pb.GrantRequest(account_id=account, asset=asset, amount=1, idempotency_key=key())
        )
    token, pages = "", 0
    while True:
        page = await stub.ListEntries(
            pb.ListEntriesRequest(account_id=account, asset=asset, page_size=1, page_token=token)
        )
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages >= 3
