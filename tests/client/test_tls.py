"""TLS, mutual TLS and the bearer token as call credentials, through the client and the CLI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from creditledger_client import LedgerClient, TlsConfig, Unavailable

from tests.cli.run import ledger, parsed
from tests.client.certs import Certs, make_certs
from tests.client.scripted import ScriptedServer


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path)


@pytest.fixture
async def mtls_server(certs: Certs) -> AsyncIterator[ScriptedServer]:
    creds = grpc.ssl_server_credentials(
        [(certs.server_key.read_bytes(), certs.server_cert.read_bytes())],
        root_certificates=certs.ca.read_bytes(),
        require_client_auth=True,
    )
    server = ScriptedServer(creds)
    await server.start()
    yield server
    await server.stop()


async def test_mutual_tls_with_token(mtls_server: ScriptedServer, certs: Certs) -> None:
    tls = TlsConfig.from_files(certs.ca, certs.client_cert, certs.client_key)
    async with LedgerClient(mtls_server.target, tls=tls, token="op-token") as client:
        account = await client.get_account("acct-tls")
    assert account.account_id == "acct-tls"
    ((_, metadata),) = mtls_server.scripts["GetAccount"].calls
    # Under TLS the token travels as call credentials, which gRPC sends this way.
    assert metadata["authorization"] == "Bearer op-token"


async def test_without_client_certificate_the_handshake_fails(
    mtls_server: ScriptedServer, certs: Certs
) -> None:
    tls = TlsConfig.from_files(certs.ca)  # trusts the server, but shows no certificate
    async with LedgerClient(mtls_server.target, tls=tls, total_timeout_s=3) as client:
        with pytest.raises(Unavailable):
            await client.get_account("acct-tls")
    assert mtls_server.scripts["GetAccount"].calls == []


async def test_cli_tls_flags(mtls_server: ScriptedServer, certs: Certs) -> None:
    flags = ["--tls-ca", str(certs.ca), "--tls-cert", str(certs.client_cert)]
    flags += ["--tls-key", str(certs.client_key), "--tls-server-name", "localhost"]
    shown = await ledger("account", "show", "acct-cli", "--json", "--token", "t0k",
                         "--target", mtls_server.target, *flags)  # fmt: skip
    assert parsed(shown)["account_id"] == "acct-cli"
    ((_, metadata),) = mtls_server.scripts["GetAccount"].calls
    assert metadata["authorization"] == "Bearer t0k"
    plaintext = await ledger("account", "show", "acct-cli", "--target", mtls_server.target,
                             "--timeout", "3")  # fmt: skip
    assert plaintext.returncode == 3 and "--tls" in plaintext.stderr
