"""The plaintext health port (--health-listen): grpc.health.v1 only, for probes
that cannot speak TLS, and nothing else (no LedgerService, no reflection)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from creditledger.v1 import ledger_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ledger.app import App
from tests.security.conftest import Pki, _config

pytestmark = pytest.mark.timeout(120)


async def test_the_health_port_serves_health_only(
    database_url: str, pki: Pki, callers_path: Path
) -> None:
    app = App(
        _config(
            database_url,
            callers_file=callers_path,
            tls_cert=pki.server.cert_path,
            tls_key=pki.server.key_path,
            health_listen="127.0.0.1:0",
        )
    )
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.health_port}") as ch:
            reply = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await ledger_pb2_grpc.LedgerServiceStub(ch).GetAccount(
                    pb.GetAccountRequest(account_id="x"), timeout=10
                )
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await app.stop()
