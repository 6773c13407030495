"""deploy/Dockerfile, built and run by a real container engine (only where one answers).

Skipped, with the reason, when no Docker engine answers, when no PostgreSQL on
TCP is given (LEDGER_TEST_DATABASE_URL), or when the base image cannot be
pulled (no registry reachable) and no substitute is named. LEDGER_TEST_BASE_IMAGE
names a local substitute for the pinned `python:3.11-slim@sha256:...` (both FROM
lines), for machines without a registry; the image is then built with the
classic builder (BuildKit would fetch its frontend from a registry). One made
from Debian's mirror alone (as root; the CA bundle so that pip inside the build
trusts the same TLS as the host):

    debootstrap --variant=minbase --include=python3.11,python3-venv,ca-certificates \
        bookworm /tmp/rootfs http://deb.debian.org/debian
    ln -sf /usr/bin/python3.11 /tmp/rootfs/usr/local/bin/python
    cp /etc/ssl/certs/ca-certificates.crt /tmp/rootfs/etc/ssl/certs/
    tar -C /tmp/rootfs -c . | docker import \
        -c 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' - local/python-substitute:3.11

The container runs as the image says (uid 10001, read-only root, no
capabilities), with the host's network to reach the test PostgreSQL: without
its files it refuses to start (exit 2); `ledger migrate` from the image
migrates a fresh database; `serve` with mounted TLS files, a client CA and a
caller file answers the health port and a mutual-TLS caller, and a client
without a certificate is turned away.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from creditledger.v1 import ledger_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.deploy.files import DOCKERFILE, REPO
from tests.security.certs import Authority
from tests.support.db import TestDatabase

pytestmark = pytest.mark.timeout(900)

IMAGE = "creditledger:live-test"
_FROM = re.compile(r"^FROM python:3\.11-slim@sha256:[0-9a-f]{64} ", re.MULTILINE)


def _docker() -> str:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client on PATH")
    probe = subprocess.run(
        [docker, "info", "--format", "{{.ServerVersion}}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no answer"])[-1]
        pytest.skip(f"no Docker engine answers: {last}")
    return docker


def _build(docker: str) -> None:
    base = os.environ.get("LEDGER_TEST_BASE_IMAGE", "")
    if base:
        text = _FROM.sub(f"FROM {base} ", DOCKERFILE.read_text())
        assert text.count(f"FROM {base} ") == 2, "both FROM lines pin python:3.11-slim by digest"
        result = subprocess.run(
            [docker, "build", "--network", "host", "-f", "-", "-t", IMAGE, "."],
            input=text,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=900,
            env={**os.environ, "DOCKER_BUILDKIT": "0"},
            check=False,
        )
    else:
        result = subprocess.run(
            [docker, "build", "--network", "host", "-f", str(DOCKERFILE), "-t", IMAGE, "."],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if result.returncode != 0 and re.search(
            r"pull|registry|no such host|lookup .*docker\.io|failed to resolve source metadata",
            result.stderr + result.stdout,
        ):
            pytest.skip(
                "the pinned base image cannot be pulled (no registry reachable); set"
                " LEDGER_TEST_BASE_IMAGE to a local substitute: "
                + (result.stderr.strip().splitlines() or [""])[-1]
            )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _readable_copy(src: Path, dst: Path) -> Path:
    """The container runs as uid 10001: mounted files must be readable by it."""
    shutil.copyfile(src, dst)
    dst.chmod(0o644)
    return dst


async def _serving(port: int, wait_s: float) -> bool:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        deadline = asyncio.get_running_loop().time() + wait_s
        while asyncio.get_running_loop().time() < deadline:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.5)
    return False


async def test_the_image_refuses_without_its_files_and_serves_mutual_tls_with_them(
    tmp_path: Path,
) -> None:
    admin = os.environ.get("LEDGER_TEST_DATABASE_URL", "")
    if not admin.startswith("postgresql://") or "@127.0.0.1" not in admin:
        pytest.skip("needs LEDGER_TEST_DATABASE_URL on 127.0.0.1 (the container uses the host's)")
    docker = _docker()
    _build(docker)
    hardening = [
        "--network",
        "host",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges:true",
    ]
    # 1. The image's own command, without its files: exit 2, saying why.
    bare = subprocess.run(
        [docker, "run", "--rm", *hardening, IMAGE],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bare.returncode == 2, bare
    assert "/etc/creditledger/tls/tls.crt" in bare.stderr, bare.stderr

    db = await TestDatabase.create(prefix="ledger_image")
    name = f"creditledger-live-{uuid.uuid4().hex[:8]}"
    try:
        # 2. `ledger migrate` from the image.
        migrate = subprocess.run(
            [docker, "run", "--rm", *hardening, IMAGE, "migrate", "--database-url", db.url],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert migrate.returncode == 0, migrate

        # 3. serve: mutual TLS with mounted files and a caller file.
        ca = Authority(tmp_path / "pki", "image-ca")
        server = ca.server()
        client = ca.issue("client", "client", uris=("spiffe://test/image-client",))
        files = tmp_path / "mounted"
        files.mkdir()
        callers = files / "callers.toml"
        callers.write_text(
            '[[caller]]\nid = "image-client"\npermissions = ["admin"]\n'
            'account_prefixes = ["*"]\ncert_identities = ["uri:spiffe://test/image-client"]\n'
        )
        callers.chmod(0o644)
        mounts = {
            _readable_copy(server.cert_path, files / "tls.crt"): "/etc/creditledger/tls/tls.crt",
            _readable_copy(server.key_path, files / "tls.key"): "/etc/creditledger/tls/tls.key",
            _readable_copy(ca.cert_path, files / "ca.crt"): "/etc/creditledger/tls/ca.crt",
            callers: "/etc/creditledger/callers/callers.toml",
        }
        port, health_port = _free_port(), _free_port()
        run = subprocess.run(
            [
                docker, "run", "-d", "--name", name, *hardening,
                *(a for src, dst in mounts.items() for a in ("-v", f"{src}:{dst}:ro")),
                "-e", "LEDGER_TLS_CLIENT_CA=/etc/creditledger/tls/ca.crt",
                "-e", f"LEDGER_DATABASE_URL={db.url}",
                IMAGE, "serve",
                "--listen", f"127.0.0.1:{port}",
                "--health-listen", f"127.0.0.1:{health_port}",
                "--metrics-listen", "",
            ],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert run.returncode == 0, run
        if not await _serving(health_port, 90):
            logs = subprocess.run(
                [docker, "logs", name], capture_output=True, text=True, timeout=30, check=False
            )
            raise AssertionError(f"never SERVING:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}")

        creds = grpc.ssl_channel_credentials(ca.cert_pem, client.key_pem, client.cert_pem)
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as ch:
            stub = ledger_pb2_grpc.LedgerServiceStub(ch)
            await stub.CreateAccount(pb.CreateAccountRequest(account_id="image:1"), timeout=10)
            account = await stub.GetAccount(pb.GetAccountRequest(account_id="image:1"), timeout=10)
            assert account.account.account_id == "image:1"
        # Without a client certificate the handshake is refused.
        anonymous = grpc.ssl_channel_credentials(ca.cert_pem)
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", anonymous) as ch:
            stub = ledger_pb2_grpc.LedgerServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.GetAccount(pb.GetAccountRequest(account_id="image:1"), timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        subprocess.run([docker, "rm", "-f", name], capture_output=True, timeout=60, check=False)
        await db.drop()
