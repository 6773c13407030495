"""Issue 15, item 5: certificate identities are typed, and one type never matches another.

The caller file names each identity with its type (`uri:`, `dns:`, `email:`,
`cn:`); the server reads the same types from the verified client
certificate (ledger.transport.auth.certificate_identities). Each type is
shown to work on a real mutual-TLS server, and each cross-type confusion
(the same text under another type) to be refused UNAUTHENTICATED.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from creditledger.v1 import ledger_pb2_grpc

from ledger.app import App
from tests.security.certs import Authority, Pair
from tests.security.conftest import _config

pytestmark = pytest.mark.timeout(120)

CALLERS = """
[[caller]]
id = "by-uri"
permissions = ["read"]
account_prefixes = ["*"]
cert_identities = ["uri:spiffe://test/typed"]

[[caller]]
id = "by-dns"
permissions = ["read"]
account_prefixes = ["*"]
cert_identities = ["dns:typed.example"]

[[caller]]
id = "by-email"
permissions = ["read"]
account_prefixes = ["*"]
cert_identities = ["email:typed@example.com"]

[[caller]]
id = "by-cn"
permissions = ["read"]
account_prefixes = ["*"]
cert_identities = ["cn:tenantB"]
"""


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority(tmp_path_factory.mktemp("typed-pki"), "typed")


@pytest.fixture(scope="module")
async def typed_server(
    database_url: str, authority: Authority, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[App]:
    path = tmp_path_factory.mktemp("typed-callers") / "callers.toml"
    path.write_text(CALLERS)
    server = authority.server("typed-server")
    app = App(
        _config(
            database_url,
            callers_file=path,
            tls_cert=server.cert_path,
            tls_key=server.key_path,
            tls_client_ca=authority.cert_path,
        )
    )
    await app.start()
    yield app
    await app.stop()


async def _caller_seen(app: App, authority: Authority, client: Pair) -> str:
    """The caller id the server admitted this certificate as, or the refusal's code."""
    creds = grpc.ssl_channel_credentials(authority.cert_pem, client.key_pem, client.cert_pem)
    async with grpc.aio.secure_channel(f"localhost:{app.port}", creds) as ch:
        stub = ledger_pb2_grpc.LedgerServiceStub(ch)
        try:
            # CreateAccount needs admin: the refusal names the caller it was admitted as.
            await stub.CreateAccount(pb.CreateAccountRequest(account_id="typed-x"), timeout=10)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
                return (exc.details() or "").split()[1]
            return exc.code().name
    return "ADMITTED-AS-ADMIN"


@pytest.mark.parametrize(
    ("name", "kw", "expected"),
    [
        # Each type, matched as written.
        ("uri", {"common_name": "x", "uris": ("spiffe://test/typed",)}, "by-uri"),
        ("dns", {"common_name": "x", "dns": ("typed.example",)}, "by-dns"),
        ("dns-case", {"common_name": "x", "dns": ("TYPED.example",)}, "by-dns"),
        ("email", {"common_name": "x", "emails": ("typed@example.com",)}, "by-email"),
        ("cn", {"common_name": "tenantB"}, "by-cn"),
        # The issue's case: an email SAN `tenantB` must not pass for the CN caller.
        ("email-as-cn", {"common_name": "x", "emails": ("tenantB",)}, "UNAUTHENTICATED"),
        ("dns-as-cn", {"common_name": "x", "dns": ("tenantB",)}, "UNAUTHENTICATED"),
        ("uri-as-cn", {"common_name": "x", "uris": ("tenantB",)}, "UNAUTHENTICATED"),
        # A CN counts only on a certificate without SAN.
        (
            "cn-beside-a-san",
            {"common_name": "tenantB", "uris": ("spiffe://test/other",)},
            "UNAUTHENTICATED",
        ),
        ("cn-as-uri", {"common_name": "spiffe://test/typed"}, "UNAUTHENTICATED"),
        ("cn-as-dns", {"common_name": "typed.example"}, "UNAUTHENTICATED"),
        ("cn-as-email", {"common_name": "typed@example.com"}, "UNAUTHENTICATED"),
        ("dns-as-uri", {"common_name": "x", "dns": ("spiffe://test/typed",)}, "UNAUTHENTICATED"),
        ("uri-as-dns", {"common_name": "x", "uris": ("typed.example",)}, "UNAUTHENTICATED"),
        ("email-as-dns", {"common_name": "x", "emails": ("typed.example",)}, "UNAUTHENTICATED"),
        ("dns-as-email", {"common_name": "x", "dns": ("typed@example.com",)}, "UNAUTHENTICATED"),
        ("uri-as-email", {"common_name": "x", "uris": ("typed@example.com",)}, "UNAUTHENTICATED"),
    ],
)
async def test_identity_types_match_only_their_own_type(
    typed_server: App, authority: Authority, name: str, kw: dict[str, object], expected: str
) -> None:
    client = authority.issue(f"typed-{name}", **kw)  # type: ignore[arg-type]
    assert await _caller_seen(typed_server, authority, client) == expected


def test_an_untyped_identity_is_refused_at_load_naming_its_place(tmp_path: Path) -> None:
    from ledger.security.callers import CallerFileError, load

    path = tmp_path / "callers.toml"
    path.write_text(CALLERS.replace('"cn:tenantB"', '"tenantB"'))
    with pytest.raises(CallerFileError) as info:
        load(path)
    message = str(info.value)
    assert "caller[3] (by-cn).cert_identities[0] has no identity type" in message
    assert "uri:" in message and "dns:" in message and "email:" in message and "cn:" in message
    assert "tenantB" not in message
