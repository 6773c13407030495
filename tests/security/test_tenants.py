"""Callers by bearer token on one server: tenant isolation, permissions,
per-caller idempotency, unauthenticated calls, health and reflection."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.security.conftest import Refusal, bearer, refusal

if TYPE_CHECKING:
    from creditledger.v1.ledger_pb2_grpc import LedgerServiceAsyncStub as Stub
ASSET = "crm_credits"


def key() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class TenantB:
    account_id: str
    open_reservation: str
    settled_reservation: str
    group_id: str


@pytest.fixture(scope="module")
async def tenant_b(tstub: Stub, tokens: dict[str, str]) -> TenantB:
    """An account of tenant B with an open reservation, a charge and a group."""
    admin, b = bearer(tokens["admin"]), bearer(tokens["tenant-b"])
    account = f"tenant-b:{uuid.uuid4().hex[:10]}"
    await tstub.CreateAccount(pb.CreateAccountRequest(account_id=account), metadata=admin)
    await tstub.Grant(
        pb.GrantRequest(account_id=account, asset=ASSET, amount=1000, idempotency_key=key()),
        metadata=b,
    )
    held = await tstub.Reserve(
        pb.ReserveRequest(account_id=account, asset=ASSET, amount=100, idempotency_key=key()),
        metadata=b,
    )
    charged = await tstub.Charge(
        pb.ChargeRequest(account_id=account, asset=ASSET, amount=50, idempotency_key=key()),
        metadata=b,
    )
    group = await tstub.ReserveGroup(
        pb.ReserveGroupRequest(
            legs=[pb.ReserveGroupLeg(account_id=account, asset=ASSET, amount=10, leg_key="x")],
            idempotency_key=key(),
        ),
        metadata=b,
    )
    return TenantB(
        account,
        held.reservation.reservation_id,
        charged.reservation.reservation_id,
        group.group.group_id,
    )


@pytest.fixture(scope="module")
async def tenant_a_account(tstub: Stub, tokens: dict[str, str]) -> str:
    account = f"tenant-a:{uuid.uuid4().hex[:10]}"
    await tstub.CreateAccount(
        pb.CreateAccountRequest(account_id=account), metadata=bearer(tokens["admin"])
    )
    await tstub.Grant(
        pb.GrantRequest(account_id=account, asset=ASSET, amount=1000, idempotency_key=key()),
        metadata=bearer(tokens["admin"]),
    )
    return account


async def refused(call: Awaitable[Any]) -> Refusal:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return refusal(info.value)


def _anonymised(r: Refusal, ident: str) -> Refusal:
    """The refusal with the id it names replaced, so two ids' refusals compare."""
    return replace(
        r,
        message=r.message.replace(ident, "<ID>"),
        metadata={k: v.replace(ident, "<ID>") for k, v in r.metadata.items()},
    )


AccountCall = Callable[["Stub", str, tuple[tuple[str, str], ...], str], Awaitable[Any]]

ACCOUNT_CALLS: dict[str, AccountCall] = {
    "GetAccount": lambda s, a, md, k: s.GetAccount(pb.GetAccountRequest(account_id=a), metadata=md),
    "GetBalance": lambda s, a, md, k: s.GetBalance(
        pb.GetBalanceRequest(account_id=a, asset=ASSET, include_lots=True), metadata=md
    ),
    "ListEntries": lambda s, a, md, k: s.ListEntries(
        pb.ListEntriesRequest(account_id=a), metadata=md
    ),
    "ListReservations": lambda s, a, md, k: s.ListReservations(
        pb.ListReservationsRequest(account_id=a), metadata=md
    ),
    "Reserve": lambda s, a, md, k: s.Reserve(
        pb.ReserveRequest(account_id=a, asset=ASSET, amount=1, idempotency_key=k),
        metadata=md,
    ),
    "Charge": lambda s, a, md, k: s.Charge(
        pb.ChargeRequest(account_id=a, asset=ASSET, amount=1, idempotency_key=k),
        metadata=md,
    ),
    "ReserveGroup": lambda s, a, md, k: s.ReserveGroup(
        pb.ReserveGroupRequest(
            legs=[pb.ReserveGroupLeg(account_id=a, asset=ASSET, amount=1, leg_key="l")],
            idempotency_key=k,
        ),
        metadata=md,
    ),
}


@pytest.mark.parametrize("method", sorted(ACCOUNT_CALLS))
async def test_tenant_a_cannot_touch_tenant_b_accounts(
    tstub: Stub, tokens: dict[str, str], tenant_b: TenantB, method: str
) -> None:
    """Whatever id tenant A guesses outside its prefix, the answer is the one a
    missing account of its own gets, word for word (and again on a retry)."""
    a = bearer(tokens["tenant-a"])
    call = ACCOUNT_CALLS[method]
    own_missing = f"tenant-a:missing-{uuid.uuid4().hex[:8]}"
    baseline = _anonymised(await refused(call(tstub, own_missing, a, key())), own_missing)
    assert baseline.code == grpc.StatusCode.NOT_FOUND
    assert baseline.reason == "ACCOUNT_NOT_FOUND"
    guesses = [
        tenant_b.account_id,
        f"tenant-b:missing-{uuid.uuid4().hex[:8]}",
        "tenant-a",  # the prefix without its separator is not inside it
        tenant_b.account_id.upper(),
        "local",
    ]
    for guess in guesses:
        got = _anonymised(await refused(call(tstub, guess, a, key())), guess)
        assert got == baseline, guess
    # A retry with the same key answers the same for a missing account and for B's.
    k1, k2 = key(), key()
    first = [
        await refused(call(tstub, i, a, k))
        for i, k in ((own_missing, k1), (tenant_b.account_id, k2))
    ]
    again = [
        await refused(call(tstub, i, a, k))
        for i, k in ((own_missing, k1), (tenant_b.account_id, k2))
    ]
    assert _anonymised(again[0], own_missing) == _anonymised(again[1], tenant_b.account_id)
    assert first[1] == again[1]


def _reservation_calls(rid: str) -> dict[str, Callable[[Stub, Any], Awaitable[Any]]]:
    return {
        "Settle": lambda s, md: s.Settle(
            pb.SettleRequest(reservation_id=rid, amount=1, idempotency_key=key()), metadata=md
        ),
        "Release": lambda s, md: s.Release(
            pb.ReleaseRequest(reservation_id=rid, idempotency_key=key()), metadata=md
        ),
        "Refund": lambda s, md: s.Refund(
            pb.RefundRequest(reservation_id=rid, amount=1, idempotency_key=key()), metadata=md
        ),
        "GetReservation": lambda s, md: s.GetReservation(
            pb.GetReservationRequest(reservation_id=rid), metadata=md
        ),
    }


async def test_tenant_a_cannot_touch_tenant_b_reservations(
    tstub: Stub, tokens: dict[str, str], tenant_b: TenantB
) -> None:
    a, b = bearer(tokens["tenant-a"]), bearer(tokens["tenant-b"])
    before = await tstub.GetAccount(
        pb.GetAccountRequest(account_id=tenant_b.account_id), metadata=b
    )
    missing = str(uuid.uuid4())
    for rid in (tenant_b.open_reservation, tenant_b.settled_reservation):
        for method, call in _reservation_calls(rid).items():
            want = _anonymised(
                await refused(_reservation_calls(missing)[method](tstub, a)), missing
            )
            assert (want.code, want.reason) == (grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND")
            got = _anonymised(await refused(call(tstub, a)), rid)
            assert got == want, (method, rid)
    group_want = _anonymised(
        await refused(
            tstub.GetReservationGroup(pb.GetReservationGroupRequest(group_id=missing), metadata=a)
        ),
        missing,
    )
    group_got = _anonymised(
        await refused(
            tstub.GetReservationGroup(
                pb.GetReservationGroupRequest(group_id=tenant_b.group_id), metadata=a
            )
        ),
        tenant_b.group_id,
    )
    assert group_got == group_want
    assert group_got.reason == "RESERVATION_GROUP_NOT_FOUND"
    # Nothing of tenant B moved.
    after = await tstub.GetAccount(pb.GetAccountRequest(account_id=tenant_b.account_id), metadata=b)
    assert after == before
    held = await tstub.GetReservation(
        pb.GetReservationRequest(reservation_id=tenant_b.open_reservation), metadata=b
    )
    assert held.reservation.remaining == 100


async def test_tenant_a_cannot_create_outside_its_prefix(
    tstub: Stub, tokens: dict[str, str]
) -> None:
    """Even an admin scoped to a prefix: PERMISSION_DENIED, decided by the id alone."""
    r = await refused(
        tstub.CreateAccount(
            pb.CreateAccountRequest(account_id="tenant-b:new"), metadata=bearer(tokens["tenant-a"])
        )
    )
    assert (r.code, r.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")


async def test_tenant_b_grant_cannot_reach_tenant_a(
    tstub: Stub, tokens: dict[str, str], tenant_a_account: str
) -> None:
    r = await refused(
        tstub.Grant(
            pb.GrantRequest(
                account_id=tenant_a_account, asset=ASSET, amount=5, idempotency_key=key()
            ),
            metadata=bearer(tokens["tenant-b"]),
        )
    )
    assert (r.code, r.reason) == (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")


async def test_read_only_caller_cannot_spend(
    tstub: Stub, tokens: dict[str, str], tenant_a_account: str, tenant_b: TenantB
) -> None:
    reader = bearer(tokens["reader"])
    account = await tstub.GetAccount(
        pb.GetAccountRequest(account_id=tenant_a_account), metadata=reader
    )
    assert account.account.account_id == tenant_a_account
    attempts: list[Awaitable[Any]] = [
        ACCOUNT_CALLS[m](tstub, tenant_a_account, reader, key())
        for m in ("Reserve", "Charge", "ReserveGroup")
    ]
    attempts += [
        c(tstub, reader)
        for m, c in _reservation_calls(tenant_b.open_reservation).items()
        if m != "GetReservation"
    ]
    attempts.append(
        tstub.Grant(
            pb.GrantRequest(
                account_id=tenant_a_account, asset=ASSET, amount=1, idempotency_key=key()
            ),
            metadata=reader,
        )
    )
    attempts.append(
        tstub.CreateAccount(
            pb.CreateAccountRequest(account_id="tenant-a:reader-made"), metadata=reader
        )
    )
    for attempt in attempts:
        r = await refused(attempt)
        assert (r.code, r.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
        assert "permission" in r.metadata


async def test_spender_cannot_refund_or_grant(
    tstub: Stub, tokens: dict[str, str], tenant_a_account: str
) -> None:
    spender = bearer(tokens["spender"])
    charged = await tstub.Charge(
        pb.ChargeRequest(account_id=tenant_a_account, asset=ASSET, amount=3, idempotency_key=key()),
        metadata=spender,
    )
    for call in (
        tstub.Refund(
            pb.RefundRequest(
                reservation_id=charged.reservation.reservation_id, amount=1, idempotency_key=key()
            ),
            metadata=spender,
        ),
        tstub.Grant(
            pb.GrantRequest(
                account_id=tenant_a_account, asset=ASSET, amount=1, idempotency_key=key()
            ),
            metadata=spender,
        ),
    ):
        r = await refused(call)
        assert r.code == grpc.StatusCode.PERMISSION_DENIED


async def test_idempotency_keys_are_per_caller(
    tstub: Stub, tokens: dict[str, str], tenant_a_account: str
) -> None:
    """Two callers on the same account with the same key and request: two reservations."""
    shared = key()
    req = pb.ReserveRequest(
        account_id=tenant_a_account, asset=ASSET, amount=2, idempotency_key=shared
    )

    async def reserve(caller: str) -> tuple[str, bool]:
        call = tstub.Reserve(req, metadata=bearer(tokens[caller]))
        resp = await call
        replayed = ("idempotent-replayed", "true") in tuple(await call.trailing_metadata() or ())
        return resp.reservation.reservation_id, replayed

    a_id, a_replayed = await reserve("tenant-a")
    b_id, b_replayed = await reserve("tenant-a-too")
    assert a_id != b_id
    assert not a_replayed and not b_replayed
    # Each caller's retry replays its own outcome.
    assert await reserve("tenant-a-too") == (b_id, True)
    assert await reserve("tenant-a") == (a_id, True)


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer clt_not-a-token-anyone-has"),),
        (("authorization", "Basic YWRtaW46YWRtaW4="),),
        (("authorization", "Bearer "),),
        (("authorization", "Bearer " + "x" * 4000),),
    ],
    ids=["none", "unknown", "basic", "empty", "huge"],
)
async def test_unknown_or_missing_credentials_are_unauthenticated(
    tstub: Stub, tenant_a_account: str, metadata: tuple[tuple[str, str], ...]
) -> None:
    r = await refused(
        tstub.GetAccount(pb.GetAccountRequest(account_id=tenant_a_account), metadata=metadata)
    )
    assert (r.code, r.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")


async def test_the_scheme_is_case_insensitive(
    tstub: Stub, tokens: dict[str, str], tenant_a_account: str
) -> None:
    md = (("authorization", f"bearer {tokens['tenant-a']}"),)
    await tstub.GetAccount(pb.GetAccountRequest(account_id=tenant_a_account), metadata=md)


async def test_health_is_open_and_reflection_needs_a_caller(
    token_channel: grpc.aio.Channel, tokens: dict[str, str]
) -> None:
    health = health_pb2_grpc.HealthStub(token_channel)
    resp = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(token_channel)
    ask = reflection_pb2.ServerReflectionRequest(list_services="")

    async def services(md: tuple[tuple[str, str], ...]) -> list[str]:
        call = refl.ServerReflectionInfo(iter([ask]), metadata=md, timeout=5)
        return [s.name for r in [r async for r in call] for s in r.list_services_response.service]

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await services(())
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "creditledger.v1.LedgerService" in await services(bearer(tokens["reader"]))


async def test_a_tenant_watching_everything_sees_only_its_own_accounts(
    tstub: Stub, tokens: dict[str, str], tenant_b: TenantB
) -> None:
    """WatchTransactions through the real auth path: tenant A asks for the whole
    ledger (no filter) and gets none of tenant B's transactions; B gets its own."""

    async def first(token: str, req: pb.WatchTransactionsRequest) -> list[pb.StreamedTransaction]:
        call = tstub.WatchTransactions(req, metadata=bearer(token))
        out: list[pb.StreamedTransaction] = []
        try:
            async with asyncio.timeout(1.5):
                async for msg in call:
                    out.extend(msg.transactions)
        except TimeoutError:
            pass
        finally:
            call.cancel()
        return out

    seen_by_a = await first(tokens["tenant-a"], pb.WatchTransactionsRequest())
    assert all(e.account_id.startswith("tenant-a:") for t in seen_by_a for e in t.entries)
    assert tenant_b.account_id not in {e.account_id for t in seen_by_a for e in t.entries}
    seen_by_b = await first(
        tokens["tenant-b"], pb.WatchTransactionsRequest(account_id=tenant_b.account_id)
    )
    assert len(seen_by_b) >= 4  # its grant, reserve, charge and group
    # Without a token: refused before anything is read.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in tstub.WatchTransactions(pb.WatchTransactionsRequest()):
            pass
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
