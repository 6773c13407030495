"""The client's TLS and token pass-through against the real server with a caller file."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from creditledger_client import (
    NO_RETRY,
    LedgerClient,
    PermissionDenied,
    RateLimited,
    TlsConfig,
    Unauthenticated,
)

from ledger.app import App
from ledger.config import Config
from ledger.security.tokens import new_token, token_hash_hex
from tests.client.certs import make_certs


@dataclass
class SecureServer:
    target: str
    tls: TlsConfig
    tokens: dict[str, str]


def caller_file(tokens: dict[str, str]) -> str:
    rights = {
        "ops": '["read", "spend", "refund", "grant", "admin"]',
        "viewer": '["read"]',
        "throttled": '["read"]',
    }
    text = ""
    for name, permissions in rights.items():
        text += (
            f'[[caller]]\nid = "{name}"\npermissions = {permissions}\n'
            f'account_prefixes = ["*"]\ntoken_sha256 = ["{token_hash_hex(tokens[name])}"]\n'
        )
        if name == "throttled":
            text += "rate_per_s = 0.01\nburst = 1\n"
    return text


@pytest.fixture
async def secure_server(database_url: str, tmp_path: Path) -> AsyncIterator[SecureServer]:
    certs = make_certs(tmp_path)
    tokens = {name: new_token() for name in ("ops", "viewer", "throttled")}
    callers = tmp_path / "callers.toml"
    callers.write_text(caller_file(tokens))
    app = App(
        Config(
            listen="127.0.0.1:0",
            database_url=database_url,
            metrics_listen="",
            pool_size_max=2,
            drain_s=1.0,
            tls_cert=certs.server_cert,
            tls_key=certs.server_key,
            callers_file=callers,
        )
    )
    await app.start()
    try:
        yield SecureServer(f"127.0.0.1:{app.port}", TlsConfig.from_files(certs.ca), tokens)
    finally:
        await app.stop()


async def test_token_over_tls_and_the_auth_errors(secure_server: SecureServer) -> None:
    s, account = secure_server, f"sec-{uuid.uuid4().hex[:10]}"
    async with LedgerClient(s.target, tls=s.tls, token=s.tokens["ops"]) as ops:
        await ops.create_account(account)
        granted = await ops.grant(account, "crm_credits", 10)
    assert granted.balance.available == 10

    async with LedgerClient(s.target, tls=s.tls) as anonymous:
        with pytest.raises(Unauthenticated) as no_token:
            await anonymous.get_account(account)
    assert no_token.value.reason == "UNAUTHENTICATED"

    async with LedgerClient(s.target, tls=s.tls, token=s.tokens["viewer"]) as viewer:
        assert (await viewer.get_balance(account, "crm_credits")).balance.available == 10
        with pytest.raises(PermissionDenied) as denied:
            await viewer.charge(account, "crm_credits", 1)
    assert denied.value.reason == "PERMISSION_DENIED"

    async with LedgerClient(
        s.target, tls=s.tls, token=s.tokens["throttled"], retry=NO_RETRY
    ) as throttled:
        await throttled.get_account(account)  # the bucket's one token
        with pytest.raises(RateLimited) as limited:
            await throttled.get_account(account)
    assert limited.value.retryable and limited.value.reason == "RATE_LIMITED"
