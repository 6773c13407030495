"""`ledger serve` as a process: what it refuses to start with, SIGHUP reloads
of the caller file and of the certificate, and no secret in its output."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from creditledger.v1 import ledger_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ledger.security.tokens import new_token, token_hash_hex
from tests.security.certs import Authority, Pair
from tests.security.conftest import bearer, refusal
from tests.support.process import REPO, ServerProcess, free_port

pytestmark = pytest.mark.timeout(120)


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    """`ledger serve` that must exit before it needs a database."""
    return subprocess.run(
        [sys.executable, "-m", "ledger", "serve", "--database-url", "postgresql://unused/x", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")},
    )


def test_plaintext_off_loopback_is_refused_with_the_reason() -> None:
    for listen in ("0.0.0.0:50999", "[::]:50999", "10.1.2.3:50999", "ledger.internal:50999"):
        out = _serve("--listen", listen)
        assert out.returncode == 2, out
        assert "not a loopback address" in out.stderr
        assert "--tls-cert" in out.stderr and "--insecure" in out.stderr


def test_anonymous_full_access_off_loopback_is_refused_unless_named(tmp_path: Path) -> None:
    """TLS alone is not enough: without a caller file anyone who reaches the port
    would have every right on every account."""
    ca = Authority(tmp_path, "t")
    server = ca.server()
    tls = ["--tls-cert", str(server.cert_path), "--tls-key", str(server.key_path)]
    for listen in ("0.0.0.0:50999", "10.1.2.3:50999"):
        out = _serve("--listen", listen, *tls)
        assert out.returncode == 2, out
        assert "without a caller file" in out.stderr
        assert "--allow-anonymous-full-access" in out.stderr
    # The environment's spelling of the same choice is refused the same way when unset.
    out = _serve("--listen", "0.0.0.0:50999", "--insecure")
    assert out.returncode == 2 and "without a caller file" in out.stderr


def test_half_a_tls_configuration_is_refused() -> None:
    out = _serve("--tls-cert", "server.pem")
    assert out.returncode == 2 and "--tls-cert and --tls-key go together" in out.stderr
    out = _serve("--tls-client-ca", "ca.pem")
    assert out.returncode == 2 and "needs --tls-cert" in out.stderr


def test_unusable_tls_files_are_refused(tmp_path: Path) -> None:
    ca = Authority(tmp_path, "t")
    one, other = ca.server("one"), ca.server("other")
    out = _serve("--tls-cert", str(one.cert_path), "--tls-key", str(other.key_path))
    assert out.returncode == 2 and "unusable" in out.stderr


def test_a_bad_caller_file_is_refused_without_repeating_its_values(tmp_path: Path) -> None:
    token = new_token()
    bad = tmp_path / "callers.toml"
    # The classic mistake: the token itself where its hash belongs.
    bad.write_text(
        f'[[caller]]\nid = "svc"\npermissions = ["read"]\naccount_prefixes = ["*"]\n'
        f'token_sha256 = ["{token}"]\n'
    )
    out = _serve("--callers", str(bad))
    assert out.returncode == 2
    assert "caller[0] (svc).token_sha256[0] must be 64 hex chars" in out.stderr
    assert token not in out.stderr + out.stdout


def test_token_helpers() -> None:
    made = subprocess.run(
        [sys.executable, "-m", "ledger", "token", "new"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    token = re.search(r"token:\s+(\S+)", made.stdout)
    digest = re.search(r"sha256:\s+([0-9a-f]{64})", made.stdout)
    assert token and digest, made.stdout
    hashed = subprocess.run(
        [sys.executable, "-m", "ledger", "token", "hash"],
        cwd=REPO,
        input=token[1] + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert hashed.stdout.strip() == digest[1] == token_hash_hex(token[1])


def test_insecure_allows_plaintext_off_loopback(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    with ServerProcess(
        database_url,
        port=port,
        extra_args=[
            "--listen",
            f"0.0.0.0:{port}",
            "--insecure",
            "--allow-anonymous-full-access",
        ],
        log_path=log,
    ):
        pass
    assert "serving plaintext on 0.0.0.0" in log.read_text()


# ---------------------------------------------------------------- reloads


def _callers(entries: dict[str, tuple[list[str], list[str]]]) -> str:
    """Caller file text: id -> (token hashes, permissions), all on every account."""
    return "".join(
        f'[[caller]]\nid = "{cid}"\npermissions = {perms}\naccount_prefixes = ["*"]\n'
        f"token_sha256 = {hashes}\n\n".replace("'", '"')
        for cid, (hashes, perms) in entries.items()
    )


def _eventually(check: Callable[[], bool], what: str, wait_s: float = 15.0) -> None:
    deadline = time.monotonic() + wait_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {wait_s} s: {what}")
        time.sleep(0.05)


def _code(target: str, token: str, method: str = "GetAccount") -> grpc.StatusCode:
    with grpc.insecure_channel(target) as ch:
        stub = ledger_pb2_grpc.LedgerServiceStub(ch)
        try:
            if method == "GetAccount":
                stub.GetAccount(
                    pb.GetAccountRequest(account_id="nobody"), metadata=bearer(token), timeout=5
                )
            else:
                stub.CreateAccount(
                    pb.CreateAccountRequest(account_id=f"made-{time.monotonic_ns()}"),
                    metadata=bearer(token),
                    timeout=5,
                )
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


def test_sighup_reloads_the_caller_file(database_url: str, tmp_path: Path) -> None:
    old, new, gone = new_token(), new_token(), new_token()
    path = tmp_path / "callers.toml"
    path.write_text(
        _callers(
            {"svc": ([token_hash_hex(old)], ["admin"]), "gone": ([token_hash_hex(gone)], ["read"])}
        )
    )
    log = tmp_path / "serve.log"
    with ServerProcess(database_url, extra_args=["--callers", str(path)], log_path=log) as server:
        assert server.proc is not None
        t = server.target
        assert _code(t, old, "CreateAccount") == grpc.StatusCode.OK
        assert _code(t, new) == grpc.StatusCode.UNAUTHENTICATED
        # Rotation: svc holds the old and the new token, read-only now; "gone" is removed.
        path.write_text(_callers({"svc": ([token_hash_hex(old), token_hash_hex(new)], ["read"])}))
        server.proc.send_signal(signal.SIGHUP)
        _eventually(lambda: _code(t, new) == grpc.StatusCode.NOT_FOUND, "the new token works")
        assert _code(t, old) == grpc.StatusCode.NOT_FOUND
        assert _code(t, gone) == grpc.StatusCode.UNAUTHENTICATED
        assert _code(t, new, "CreateAccount") == grpc.StatusCode.PERMISSION_DENIED
        # A broken file is logged and changes nothing.
        path.write_text(f'[[caller]]\nid = "svc"\ntoken_sha256 = ["{new}"]\n')
        server.proc.send_signal(signal.SIGHUP)
        _eventually(lambda: "caller file not reloaded" in log.read_text(), "the error is logged")
        assert _code(t, new) == grpc.StatusCode.NOT_FOUND
        # Rotation done: the old token stops working.
        path.write_text(_callers({"svc": ([token_hash_hex(new)], ["read"])}))
        server.proc.send_signal(signal.SIGHUP)
        _eventually(lambda: _code(t, old) == grpc.StatusCode.UNAUTHENTICATED, "old token off")
        assert _code(t, new) == grpc.StatusCode.NOT_FOUND
    text = log.read_text()
    for secret in (old, new, gone):
        assert secret not in text


class TlsServerProcess(ServerProcess):
    """A ServerProcess whose readiness check speaks TLS, trusting `root_pem`."""

    root_pem: bytes = b""

    def wait_serving(self, wait_s: float = 30.0) -> None:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"ledger serve exited with {self.proc.returncode}")
            if _tls_health(self.target, self.root_pem) == grpc.StatusCode.OK:
                return
            time.sleep(0.1)
        raise TimeoutError(f"ledger serve on {self.target} not SERVING within {wait_s} s")


def _tls_health(target: str, root_pem: bytes) -> grpc.StatusCode:
    creds = grpc.ssl_channel_credentials(root_certificates=root_pem)
    with grpc.secure_channel(target, creds) as ch:
        try:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


def test_sighup_reloads_the_certificate(database_url: str, tmp_path: Path) -> None:
    first, second = Authority(tmp_path / "1", "first"), Authority(tmp_path / "2", "second")
    live: Pair = first.server()
    cert, key = tmp_path / "server.pem", tmp_path / "server-key.pem"
    cert.write_bytes(live.cert_pem)
    key.write_bytes(live.key_pem)
    server = TlsServerProcess(
        database_url,
        extra_args=["--tls-cert", str(cert), "--tls-key", str(key)],
        log_path=tmp_path / "serve.log",
    )
    server.root_pem = first.cert_pem
    with server:
        assert server.proc is not None
        assert _tls_health(server.target, second.cert_pem) == grpc.StatusCode.UNAVAILABLE
        renewed = second.server()
        cert.write_bytes(renewed.cert_pem)
        key.write_bytes(renewed.key_pem)
        server.proc.send_signal(signal.SIGHUP)
        _eventually(
            lambda: _tls_health(server.target, second.cert_pem) == grpc.StatusCode.OK,
            "new connections get the new certificate",
        )
        assert _tls_health(server.target, first.cert_pem) == grpc.StatusCode.UNAVAILABLE


# ---------------------------------------------------------------- secrets


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_no_secret_in_logs_metrics_or_errors(
    database_url: str, tmp_path: Path, log_format: str
) -> None:
    admin, limited = new_token(), new_token()
    wrong = new_token()  # a token-shaped secret nobody was given
    path = tmp_path / "callers.toml"
    path.write_text(
        _callers({"admin": ([token_hash_hex(admin)], ["admin"])})
        + '[[caller]]\nid = "limited"\npermissions = ["read"]\naccount_prefixes = ["*"]\n'
        f'token_sha256 = ["{token_hash_hex(limited)}"]\nrate_per_s = 1\nburst = 1\n'
    )
    log = tmp_path / "serve.log"
    seen: list[str] = []
    with ServerProcess(
        database_url,
        extra_args=["--callers", str(path), "--log-format", log_format, "--log-level", "debug"],
        log_path=log,
    ) as server:
        seen += _exercise(server.target, admin, limited, wrong)
        with urllib.request.urlopen(server.metrics_url, timeout=10) as resp:
            seen.append(resp.read().decode())
    seen.append(log.read_text())
    assert "UNAUTHENTICATED" in seen[-1] and "RATE_LIMITED" in seen[-1]
    secrets = {admin, limited, wrong}
    secrets |= {token_hash_hex(t) for t in secrets}
    secrets |= {t.removeprefix("clt_") for t in (admin, limited, wrong)}
    for text in seen:
        for secret in secrets:
            assert secret not in text


def _exercise(target: str, admin: str, limited: str, wrong: str) -> list[str]:
    """Calls that succeed and fail with tokens; returns every error's text and details."""
    out: list[str] = []

    async def run() -> None:
        async with grpc.aio.insecure_channel(target) as ch:
            stub = ledger_pb2_grpc.LedgerServiceStub(ch)
            calls: list[tuple[Any, tuple[tuple[str, str], ...]]] = [
                (pb.CreateAccountRequest(account_id="acct-s"), bearer(admin)),
                (pb.CreateAccountRequest(account_id="acct-s"), bearer(admin)),  # exists
                (pb.CreateAccountRequest(account_id="acct-t"), bearer(wrong)),
                (pb.CreateAccountRequest(account_id="acct-u"), bearer(limited)),
                (pb.CreateAccountRequest(account_id="acct-v"), (("authorization", wrong),)),
                (pb.CreateAccountRequest(account_id="bad id"), bearer(admin)),
            ]
            calls += [(pb.GetAccountRequest(account_id="acct-s"), bearer(limited))] * 3
            for req, md in calls:
                method = (
                    stub.CreateAccount
                    if isinstance(req, pb.CreateAccountRequest)
                    else stub.GetAccount
                )
                try:
                    await method(req, metadata=md, timeout=5)
                except grpc.aio.AioRpcError as err:
                    r = refusal(err)
                    out.append(f"{err.code()} {err.details()} {r} {err.debug_error_string()}")
                    out.append(repr(err.trailing_metadata()))

    asyncio.run(run())
    return out
