"""Issue 15, item 7: a replay re-checks the caller's tenant scope as it is now.

A caller whose account prefixes are narrowed (caller file reload) must not get
stored outcomes on accounts it may no longer touch back by retrying a key: the
retry reads exactly as a first call outside its scope would (NOT_FOUND)."""

from __future__ import annotations

import asyncio
import urllib.request
import uuid
from pathlib import Path

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from creditledger.v1 import ledger_pb2_grpc

from ledger.app import App
from ledger.security.tokens import new_token, token_hash_hex
from tests.security.conftest import _config, bearer, refusal

pytestmark = pytest.mark.timeout(120)
ASSET = "crm_credits"


def _file(admin: str, mover: str, prefixes: list[str]) -> str:
    quoted = ", ".join(f'"{p}"' for p in prefixes)
    return (
        f'[[caller]]\nid = "admin"\npermissions = ["admin"]\naccount_prefixes = ["*"]\n'
        f'token_sha256 = ["{token_hash_hex(admin)}"]\n\n'
        f'[[caller]]\nid = "mover"\npermissions = ["read", "spend"]\n'
        f'account_prefixes = [{quoted}]\ntoken_sha256 = ["{token_hash_hex(mover)}"]\n'
    )


async def test_a_replay_after_the_scope_was_narrowed_reads_as_not_found(
    database_url: str, tmp_path: Path
) -> None:
    admin, mover = new_token(), new_token()
    path = tmp_path / "callers.toml"
    path.write_text(_file(admin, mover, ["tenant-a:", "tenant-c:"]))
    app = App(_config(database_url, callers_file=path))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            stub = ledger_pb2_grpc.LedgerServiceStub(ch)
            account = f"tenant-c:{uuid.uuid4().hex[:10]}"
            await stub.CreateAccount(
                pb.CreateAccountRequest(account_id=account), metadata=bearer(admin)
            )
            await stub.Grant(
                pb.GrantRequest(
                    account_id=account, asset=ASSET, amount=100, idempotency_key=uuid.uuid4().hex
                ),
                metadata=bearer(admin),
            )
            reserve = pb.ReserveRequest(
                account_id=account, asset=ASSET, amount=5, idempotency_key=uuid.uuid4().hex
            )
            first = await stub.Reserve(reserve, metadata=bearer(mover))
            rid = first.reservation.reservation_id
            release = pb.ReleaseRequest(reservation_id=rid, idempotency_key=uuid.uuid4().hex)
            await stub.Release(release, metadata=bearer(mover))
            # Still in scope: the retries replay.
            again = stub.Reserve(reserve, metadata=bearer(mover))
            assert (await again).reservation.reservation_id == rid
            assert ("idempotent-replayed", "true") in tuple(await again.trailing_metadata() or ())

            path.write_text(_file(admin, mover, ["tenant-a:"]))
            app.reload()

            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Reserve(reserve, metadata=bearer(mover))
            r = refusal(info.value)
            assert (r.code, r.reason) == (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")
            assert "idempotent-replayed" not in r.metadata
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Release(release, metadata=bearer(mover))
            r = refusal(info.value)
            assert (r.code, r.reason) == (grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND")
            trailing = dict(info.value.trailing_metadata() or ())
            assert "idempotent-replayed" not in trailing
    finally:
        await app.stop()


async def test_metrics_do_not_name_assets_by_default(database_url: str, tmp_path: Path) -> None:
    """/metrics has no authentication: it must not list every tenant's asset names."""
    admin, mover = new_token(), new_token()
    path = tmp_path / "callers.toml"
    path.write_text(_file(admin, mover, ["tenant-a:"]))
    app = App(_config(database_url, callers_file=path))
    await app.start()
    secret_asset = f"tenant_secret_{uuid.uuid4().hex[:8]}"
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            stub = ledger_pb2_grpc.LedgerServiceStub(ch)
            account = f"tenant-a:{uuid.uuid4().hex[:10]}"
            await stub.CreateAccount(
                pb.CreateAccountRequest(account_id=account), metadata=bearer(admin)
            )
            await stub.Grant(
                pb.GrantRequest(
                    account_id=account,
                    asset=secret_asset,
                    amount=7,
                    idempotency_key=uuid.uuid4().hex,
                ),
                metadata=bearer(admin),
            )
        url = f"http://127.0.0.1:{app.metrics_port}/metrics"
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())
    finally:
        await app.stop()
    body = text.decode()
    assert secret_asset not in body
    assert 'ledger_credits_moved_total{asset="_all"' in body
