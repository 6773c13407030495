"""ListEntries page tokens: always accepted back, bounded in length, bound to their query,
and a forged one is INVALID_ARGUMENT naming page_token, never INTERNAL (issue 13, items 3-4)."""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from creditledger.v1.ledger_pb2_grpc import LedgerServiceAsyncStub

import uuid

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb

from ledger.domain import limits
from ledger.service import pagetoken
from tests.conftest import key
from tests.support.rpc import error_info, field_violations

pytestmark = pytest.mark.timeout(60)

INT64_MAX = 2**63 - 1


async def longest_account(stub: LedgerServiceAsyncStub, asset: str, grants: int) -> str:
    """An account whose id is as long as allowed (128 chars), with `grants` entries in `asset`."""
    account_id = ("acct-" + uuid.uuid4().hex).ljust(limits.ACCOUNT_ID_LEN_MAX, "x")
    await stub.CreateAccount(pb.CreateAccountRequest(account_id=account_id))
    for _ in range(grants):
        await stub.Grant(
            pb.GrantRequest(account_id=account_id, asset=asset, amount=1, idempotency_key=key())
        )
    return account_id


async def refused_page_token(stub: LedgerServiceAsyncStub, request: pb.ListEntriesRequest) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListEntries(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (
        f"{request.page_token[:80]!r}: {err.value.code()} {err.value.details()}"
    )
    assert error_info(err.value).reason == "INVALID_ARGUMENT"
    assert field_violations(err.value) == ["page_token"]


async def test_every_token_is_accepted_back_with_the_longest_ids(
    stub: LedgerServiceAsyncStub,
) -> None:
    asset = "a" * limits.ASSET_LEN_MAX
    account_id = await longest_account(stub, asset, 4)
    for query_asset in (asset, ""):
        seen: list[int] = []
        token = ""
        while True:
            page = await stub.ListEntries(
                pb.ListEntriesRequest(
                    account_id=account_id, asset=query_asset, page_size=1, page_token=token
                )
            )
            seen.extend(int(e.entry_id) for e in page.entries)
            token = page.next_page_token
            if not token:
                break
            assert len(token) <= limits.PAGE_TOKEN_LEN_MAX, len(token)
            # Opaque: neither the account nor the asset shows through the token.
            decoded = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            assert account_id.encode() not in decoded and asset.encode() not in decoded
        assert len(seen) == 4 and seen == sorted(seen, reverse=True)


async def test_a_token_is_bound_to_its_account_and_asset(stub: LedgerServiceAsyncStub) -> None:
    asset = "b" * limits.ASSET_LEN_MAX
    account_id = await longest_account(stub, asset, 2)
    other = await longest_account(stub, asset, 2)
    await stub.Grant(
        pb.GrantRequest(account_id=account_id, asset="crm_credits", amount=1, idempotency_key=key())
    )
    first = await stub.ListEntries(
        pb.ListEntriesRequest(account_id=account_id, asset=asset, page_size=1)
    )
    token = first.next_page_token
    assert token
    for wrong in (
        pb.ListEntriesRequest(account_id=other, asset=asset, page_token=token),
        pb.ListEntriesRequest(account_id=account_id, asset="crm_credits", page_token=token),
        pb.ListEntriesRequest(account_id=account_id, asset="", page_token=token),
    ):
        await refused_page_token(stub, wrong)
    # Truncated or altered, the token is refused too.
    for broken in (token[:-1], token[:-4], token[: len(token) // 2], token[1:], token + "A"):
        await refused_page_token(
            stub, pb.ListEntriesRequest(account_id=account_id, asset=asset, page_token=broken)
        )


def legacy_token(before: object, account_id: str, asset: str) -> str:
    """The token format the server made before issue 13, with a forged position."""
    raw = json.dumps({"b": before, "a": account_id, "s": asset}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode()


def forged_token(before: object, account_id: str, asset: str) -> str:
    """Today's format (white-box: ledger.service.pagetoken) for this very query, forged."""
    query = pagetoken.query_hash("ListEntries", (account_id, asset))
    raw = json.dumps([1, query, before], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


OUT_OF_RANGE = [0, -1, 2**63, -(2**63), -(2**63) - 1, 2**64, 10**30]
NOT_INTS = [1.5, 1e300, 1.0, "1", None, True, False, [1], {"b": 1}]


@pytest.mark.parametrize("before", OUT_OF_RANGE + NOT_INTS)
@pytest.mark.parametrize("forge", [legacy_token, forged_token])
async def test_a_forged_position_is_invalid_argument(
    stub: LedgerServiceAsyncStub, before: object, forge: Any
) -> None:
    account_id = f"acct-{uuid.uuid4().hex[:10]}"
    await stub.CreateAccount(pb.CreateAccountRequest(account_id=account_id))
    await refused_page_token(
        stub, pb.ListEntriesRequest(account_id=account_id, page_token=forge(before, account_id, ""))
    )


@pytest.mark.parametrize("before", [1, 2, 2**31, 2**53 + 1, INT64_MAX])
async def test_a_forged_position_in_range_reads_before_it(
    stub: LedgerServiceAsyncStub, before: int
) -> None:
    """Forging a position of one's own query shows nothing the caller may not read anyway."""
    account_id = await longest_account(stub, "crm_credits", 1)
    page = await stub.ListEntries(
        pb.ListEntriesRequest(
            account_id=account_id, page_token=forged_token(before, account_id, "")
        )
    )
    assert all(int(e.entry_id) < before for e in page.entries)


@pytest.mark.parametrize(
    "token",
    [
        "!!!!",
        "%%%",
        "é",
        "\x00",
        "a" * (limits.PAGE_TOKEN_LEN_MAX + 1),
        base64.urlsafe_b64encode(b"\xff\xfe\x00").decode(),
        base64.urlsafe_b64encode(b"[" * 150).decode(),
        base64.urlsafe_b64encode(b"[1,2,3]").decode(),
        base64.urlsafe_b64encode(b'"x"').decode(),
        base64.urlsafe_b64encode(b"NaN").decode(),
        base64.urlsafe_b64encode(b"1" * 180).decode(),
    ],
)
async def test_junk_tokens_are_invalid_argument(stub: LedgerServiceAsyncStub, token: str) -> None:
    account_id = f"acct-{uuid.uuid4().hex[:10]}"
    await stub.CreateAccount(pb.CreateAccountRequest(account_id=account_id))
    await refused_page_token(stub, pb.ListEntriesRequest(account_id=account_id, page_token=token))
