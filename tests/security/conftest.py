"""Fixtures of the security tests: certificates made now, a caller file, and
in-process servers (token auth on loopback, TLS, mutual TLS) on the test database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from creditledger.v1 import ledger_pb2_grpc
from google.rpc import error_details_pb2, status_pb2

from ledger.app import App
from ledger.config import Config
from ledger.security.tokens import new_token, token_hash_hex
from tests.security.certs import Authority, Pair
from tests.support.db import TestDatabase

if TYPE_CHECKING:
    from creditledger.v1.ledger_pb2_grpc import LedgerServiceAsyncStub

STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class Pki:
    ca: Authority
    rogue: Authority
    server: Pair
    billing: Pair  # SAN URI spiffe://test/billing -> caller "billing-cert"
    cn_only: Pair  # no SAN, CN cn-only-client -> caller "cn-only"
    stranger: Pair  # our CA, but an identity no caller lists
    rogue_billing: Pair  # the billing identity, signed by another CA


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    """A database of its own: other suites' servers move their clocks (expiry tests),
    and their sweepers would expire these tests' reservations in a shared one."""
    db = await TestDatabase.create(prefix="ledger_security")
    yield db.url
    await db.drop()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = Authority(d, "test")
    rogue = Authority(d / "rogue", "rogue")
    return Pki(
        ca,
        rogue,
        ca.server(),
        ca.issue("billing", "billing", uris=("spiffe://test/billing",)),
        ca.issue("cn-only", "cn-only-client"),
        ca.issue("stranger", "stranger", uris=("spiffe://test/stranger",)),
        rogue.issue("rogue-billing", "billing", uris=("spiffe://test/billing",)),
    )


# Caller name -> (permissions, prefixes, extra TOML lines)
CALLERS: dict[str, tuple[list[str], list[str], str]] = {
    "admin": (["admin"], ["*"], ""),
    "tenant-a": (["read", "spend", "refund"], ["tenant-a:"], ""),
    "tenant-a-too": (["read", "spend"], ["tenant-a:"], ""),
    "tenant-b": (["read", "spend", "refund", "grant"], ["tenant-b:"], ""),
    "reader": (["read"], ["tenant-a:", "tenant-b:"], ""),
    "spender": (["read", "spend"], ["tenant-a:"], ""),
    "limited": (["read"], ["tenant-a:"], "rate_per_s = 5\nburst = 3\n"),
    "batcher": (["read", "spend"], ["tenant-a:"], "rate_per_s = 5\nburst = 3\n"),
}


@pytest.fixture(scope="session")
def tokens() -> dict[str, str]:
    return {name: new_token() for name in CALLERS}


def caller_file_text(tokens: dict[str, str], extra: str = "") -> str:
    out = ["# test callers\n"]
    for name, (perms, prefixes, lines) in CALLERS.items():
        out.append(
            f'[[caller]]\nid = "{name}"\npermissions = {perms!r}\n'
            f"account_prefixes = {prefixes!r}\n"
            f'token_sha256 = ["{token_hash_hex(tokens[name])}"]\n{lines}\n'.replace("'", '"')
        )
    out.append(
        '[[caller]]\nid = "billing-cert"\npermissions = ["read", "spend"]\n'
        'account_prefixes = ["tenant-a:"]\ncert_identities = ["uri:spiffe://test/billing"]\n\n'
        '[[caller]]\nid = "cn-only"\npermissions = ["read"]\n'
        'account_prefixes = ["*"]\ncert_identities = ["cn:cn-only-client"]\n\n'
    )
    return "".join(out) + extra


@pytest.fixture(scope="session")
def callers_path(tmp_path_factory: pytest.TempPathFactory, tokens: dict[str, str]) -> Path:
    path = tmp_path_factory.mktemp("callers") / "callers.toml"
    path.write_text(caller_file_text(tokens))
    return path


@dataclass
class Served:
    app: App

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.app.port}"


async def _serve(config: Config) -> App:
    app = App(config)
    await app.start()
    return app


def _config(database_url: str, **kw: object) -> Config:
    return Config(
        listen="127.0.0.1:0",
        database_url=database_url,
        metrics_listen="127.0.0.1:0",
        pool_size_max=3,
        sweep_interval_s=0.5,
        drain_s=1.0,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="session")
async def token_server(database_url: str, callers_path: Path) -> AsyncIterator[Served]:
    """Plaintext on loopback, callers by bearer token."""
    app = await _serve(_config(database_url, callers_file=callers_path))
    yield Served(app)
    await app.stop()


@pytest.fixture(scope="session")
async def tls_server(database_url: str, pki: Pki, callers_path: Path) -> AsyncIterator[Served]:
    """TLS (no client certificates), callers by bearer token."""
    app = await _serve(
        _config(
            database_url,
            callers_file=callers_path,
            tls_cert=pki.server.cert_path,
            tls_key=pki.server.key_path,
        )
    )
    yield Served(app)
    await app.stop()


@pytest.fixture(scope="session")
async def mtls_server(database_url: str, pki: Pki, callers_path: Path) -> AsyncIterator[Served]:
    """Mutual TLS: a client certificate from the test CA is required."""
    app = await _serve(
        _config(
            database_url,
            callers_file=callers_path,
            tls_cert=pki.server.cert_path,
            tls_key=pki.server.key_path,
            tls_client_ca=pki.ca.cert_path,
        )
    )
    yield Served(app)
    await app.stop()


@pytest.fixture(scope="session")
async def token_channel(token_server: Served) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(token_server.target) as ch:
        yield ch


@pytest.fixture(scope="session")
def tstub(token_channel: grpc.aio.Channel) -> LedgerServiceAsyncStub:
    return ledger_pb2_grpc.LedgerServiceStub(token_channel)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@dataclass(frozen=True)
class Refusal:
    code: grpc.StatusCode
    message: str
    reason: str
    metadata: dict[str, str]
    retry_delay_s: float | None


def refusal(err: grpc.aio.AioRpcError) -> Refusal:
    """The status, message and ErrorInfo (and RetryInfo) of a failed call."""
    raw = next((v for k, v in err.trailing_metadata() or () if k == STATUS_DETAILS_KEY), None)
    reason, metadata, delay = "", {}, None
    if raw is not None:
        st = status_pb2.Status.FromString(raw if isinstance(raw, bytes) else raw.encode())
        for detail in st.details:
            info = error_details_pb2.ErrorInfo()
            retry = error_details_pb2.RetryInfo()
            if detail.Unpack(info):
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Unpack(retry):
                delay = retry.retry_delay.ToMilliseconds() / 1000
    return Refusal(err.code(), err.details() or "", reason, metadata, delay)
