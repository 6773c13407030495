"""TLS and mutual TLS with certificates made at test time, through raw stubs,
the Python client libraries and the operator CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from typing import TYPE_CHECKING

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from creditledger.v1 import ledger_pb2_grpc
from creditledger_client import (
    AccountNotFound,
    LedgerClient,
    PermissionDenied,
    SyncLedgerClient,
    TlsConfig,
    Unauthenticated,
    Unavailable,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.security.certs import Pair
from tests.security.conftest import Pki, Served, bearer
from tests.support.process import REPO

if TYPE_CHECKING:
    from creditledger.v1.ledger_pb2_grpc import LedgerServiceAsyncStub

ASSET = "crm_credits"


def _stub(channel: grpc.aio.Channel) -> LedgerServiceAsyncStub:
    return ledger_pb2_grpc.LedgerServiceStub(channel)


def _tls(
    pki: Pki, client: Pair | None = None, root: bytes | None = None
) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=root or pki.ca.cert_pem,
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None,
    )


async def _code_of(target: str, creds: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    """OK when a health check over these credentials works, else the failure's code."""
    channel = (
        grpc.aio.secure_channel(target, creds)
        if creds is not None
        else grpc.aio.insecure_channel(target)
    )
    async with channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.aio.AioRpcError as err:
            return err.code()
    return grpc.StatusCode.OK


async def _account(target: str, pki: Pki, admin_token: str, prefix: str = "tenant-a") -> str:
    account = f"{prefix}:{uuid.uuid4().hex[:10]}"
    async with grpc.aio.secure_channel(target, _tls(pki)) as ch:
        stub = _stub(ch)
        await stub.CreateAccount(
            pb.CreateAccountRequest(account_id=account), metadata=bearer(admin_token)
        )
        await stub.Grant(
            pb.GrantRequest(
                account_id=account, asset=ASSET, amount=100, idempotency_key=uuid.uuid4().hex
            ),
            metadata=bearer(admin_token),
        )
    return account


async def test_tls_with_a_token_works(tls_server: Served, pki: Pki, tokens: dict[str, str]) -> None:
    assert await _code_of(tls_server.target, _tls(pki)) == grpc.StatusCode.OK
    account = await _account(tls_server.target, pki, tokens["admin"])
    async with grpc.aio.secure_channel(tls_server.target, _tls(pki)) as ch:
        got = await _stub(ch).GetAccount(
            pb.GetAccountRequest(account_id=account), metadata=bearer(tokens["reader"])
        )
    assert got.account.balances[0].available == 100


async def test_plaintext_to_a_tls_port_fails(tls_server: Served, mtls_server: Served) -> None:
    for served in (tls_server, mtls_server):
        assert await _code_of(served.target, None) == grpc.StatusCode.UNAVAILABLE


async def test_a_server_from_an_unknown_ca_is_refused(tls_server: Served, pki: Pki) -> None:
    creds = _tls(pki, root=pki.rogue.cert_pem)
    assert await _code_of(tls_server.target, creds) == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_identifies_the_caller_by_its_certificate(
    mtls_server: Served, pki: Pki, tokens: dict[str, str]
) -> None:
    mine = f"tenant-a:{uuid.uuid4().hex[:10]}"
    theirs = f"tenant-b:{uuid.uuid4().hex[:10]}"
    async with grpc.aio.secure_channel(mtls_server.target, _tls(pki, pki.billing)) as ch:
        stub = _stub(ch)
        # A token, when sent, names the caller (here the admin) over the certificate.
        for account in (mine, theirs):
            await stub.CreateAccount(
                pb.CreateAccountRequest(account_id=account), metadata=bearer(tokens["admin"])
            )
            await stub.Grant(
                pb.GrantRequest(
                    account_id=account, asset=ASSET, amount=9, idempotency_key=uuid.uuid4().hex
                ),
                metadata=bearer(tokens["admin"]),
            )
        # Without a token the certificate's SAN URI is the caller "billing-cert".
        held = await stub.Reserve(
            pb.ReserveRequest(
                account_id=mine, asset=ASSET, amount=4, idempotency_key=uuid.uuid4().hex
            )
        )
        assert held.balance.available == 5
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Reserve(
                pb.ReserveRequest(
                    account_id=theirs, asset=ASSET, amount=4, idempotency_key=uuid.uuid4().hex
                )
            )
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Refund(
                pb.RefundRequest(
                    reservation_id=held.reservation.reservation_id,
                    amount=1,
                    idempotency_key=uuid.uuid4().hex,
                )
            )
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED

    # A certificate without SAN is known by its CN: "cn-only" may read every account.
    async with grpc.aio.secure_channel(mtls_server.target, _tls(pki, pki.cn_only)) as ch:
        got = await _stub(ch).GetAccount(pb.GetAccountRequest(account_id=theirs))
        assert got.account.account_id == theirs


async def test_mutual_tls_refusals(mtls_server: Served, pki: Pki) -> None:
    target = mtls_server.target
    # No client certificate, or one from another CA: the handshake fails.
    assert await _code_of(target, _tls(pki)) == grpc.StatusCode.UNAVAILABLE
    assert await _code_of(target, _tls(pki, pki.rogue_billing)) == grpc.StatusCode.UNAVAILABLE
    # Our CA, but an identity no caller lists: connected, yet not a caller.
    assert await _code_of(target, _tls(pki, pki.stranger)) == grpc.StatusCode.OK
    async with grpc.aio.secure_channel(target, _tls(pki, pki.stranger)) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _stub(ch).GetAccount(pb.GetAccountRequest(account_id="tenant-a:x"))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_python_clients_take_tls_and_a_token(
    tls_server: Served, mtls_server: Served, pki: Pki, tokens: dict[str, str]
) -> None:
    account = await _account(tls_server.target, pki, tokens["admin"])
    tls = TlsConfig.from_files(pki.ca.cert_path)
    async with LedgerClient(tls_server.target, tls=tls, token=tokens["tenant-a"]) as client:
        assert (await client.get_account(account)).account_id == account
        with pytest.raises(AccountNotFound):
            await client.get_account(account.replace("tenant-a:", "tenant-b:"))
    async with LedgerClient(tls_server.target, tls=tls, token="clt_wrong", timeout_s=2) as client:
        with pytest.raises(Unauthenticated):
            await client.get_account(account)
    mutual = TlsConfig.from_files(pki.ca.cert_path, pki.billing.cert_path, pki.billing.key_path)

    def blocking() -> None:  # off the event loop, which serves the calls
        with SyncLedgerClient(mtls_server.target, tls=mutual) as sync:
            assert sync.get_account(account).account_id == account
            with pytest.raises(PermissionDenied):
                sync.grant(account, ASSET, 1)
        with (
            SyncLedgerClient(mtls_server.target, tls=tls, total_timeout_s=2) as no_cert,
            pytest.raises(Unavailable),
        ):
            no_cert.get_account(account)

    await asyncio.to_thread(blocking)


async def test_operator_cli_takes_tls_and_a_token(
    tls_server: Served, pki: Pki, tokens: dict[str, str]
) -> None:
    async def ledger(*args: str, token: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "ledger",
                *args,
                "--target",
                tls_server.target,
                "--tls-ca",
                str(pki.ca.cert_path),
                "--json",
            ],
            cwd=REPO,
            env={**os.environ, "LEDGER_TOKEN": token},
            capture_output=True,
            text=True,
            timeout=60,
        )

    account = f"tenant-a:{uuid.uuid4().hex[:10]}"
    made = await ledger("account", "create", account, token=tokens["admin"])
    assert made.returncode == 0, made.stderr
    denied = await ledger("account", "create", account + "x", token=tokens["reader"])
    assert denied.returncode == 1 and "PERMISSION_DENIED" in denied.stdout + denied.stderr
    shown = await ledger("account", "show", account, token=tokens["reader"])
    assert shown.returncode == 0 and account in shown.stdout
    for out in (made, denied, shown):
        assert tokens["admin"] not in out.stdout + out.stderr
        assert tokens["reader"] not in out.stdout + out.stderr
