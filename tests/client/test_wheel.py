"""The creditledger-client wheel, alone in a fresh venv, against a real `ledger serve` process.

One test, because its parts share the slow steps (build, venv, server start):
the wheel installs with its declared dependencies only; the server package
and asyncpg are not importable next to it; the email and CRM scenarios and
every typed exception behave; and a charge whose reply is lost to a server
kill is retried by the client with the same key after the restart: replayed,
charged once.
"""

from __future__ import annotations

import asyncio
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import grpc
from creditledger.v1 import ledger_pb2 as pb
from creditledger.v1 import ledger_pb2_grpc

from tests.client.proxy import ReplyLosingProxy
from tests.client.venv import build_wheel, make_client_venv
from tests.support.process import ServerProcess, free_port

SCRIPT = Path(__file__).with_name("scenarios.py")
EXPECTED_EXCEPTIONS = {
    "InvalidArgument", "AccountNotFound", "ReservationNotFound", "ReservationGroupNotFound",
    "AccountExists", "IdempotencyKeyReused", "ReservationClosed", "AmountExceedsRemaining",
    "AmountExceedsSettled", "InsufficientCredits", "ReservationExpired", "Unavailable",
}  # fmt: skip


def test_wheel_carries_types_and_declares_only_client_dependencies(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = zf.read(metadata_name).decode()
    for name in (
        "creditledger_client/py.typed",
        "creditledger_client/aio.py",
        "creditledger_client/sync.py",
        "creditledger/v1/ledger_pb2.pyi",
        "creditledger/v1/ledger_pb2_grpc.pyi",
    ):
        assert name in names, name
    assert not any(n.startswith(("ledger/", "tests/", "tools/")) for n in names), names
    requires = sorted(
        line.split(":", 1)[1].split(">")[0].split("<")[0].split("=")[0].strip().lower()
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:")
    )
    assert requires == ["googleapis-common-protos", "grpcio", "protobuf"], requires


async def test_fresh_venv_client_against_a_live_server(database_url: str, tmp_path: Path) -> None:
    python = await asyncio.to_thread(make_client_venv, tmp_path)
    server = ServerProcess(database_url, log_path=tmp_path / "server.log")
    await asyncio.to_thread(server.start)
    restart: asyncio.Task[ServerProcess] | None = None

    async def kill_and_restart() -> None:
        nonlocal restart
        server.kill()  # SIGKILL: the committed charge's reply dies with the process
        restart = asyncio.create_task(asyncio.to_thread(server.start))

    proxy = ReplyLosingProxy(server.port, kill_and_restart)
    await proxy.start()
    try:
        events = await asyncio.wait_for(
            run_scenarios(python, server.target, proxy, tmp_path), timeout=120
        )
        assert proxy.triggered.is_set(), "the proxy never lost a reply"
        assert restart is not None
        await restart
        await check_charged_once(server.target, events["restart"]["account"])
    finally:
        await proxy.close()
        if restart is not None and not restart.done():
            await restart
        await asyncio.to_thread(server.stop)

    assert events["isolation"]["client_file"].startswith(str(tmp_path))
    assert events["email"] == {"event": "email", "charged": 30, "available": 0}
    assert events["crm"]["left"] == [4_000, 5_000, 4_900, 2_000]
    assert set(events["exceptions"]["seen"]) == EXPECTED_EXCEPTIONS
    assert events["restart"]["replayed"] is True and events["restart"]["available"] == 93
    assert "done" in events


async def run_scenarios(
    python: Path, target: str, proxy: ReplyLosingProxy, tmp_path: Path
) -> dict[str, dict[str, Any]]:
    """Runs scenarios.py in the venv; arms the proxy when it asks; returns its events by name."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    stderr_path = tmp_path / "scenarios.stderr"
    with stderr_path.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            str(python), str(SCRIPT),
            "--target", target, "--proxy", proxy.target, "--dead", f"127.0.0.1:{free_port()}",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr,
            cwd=tmp_path, env=env,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stdin is not None
        events: dict[str, dict[str, Any]] = {}
        try:
            async for line in proc.stdout:
                event = json.loads(line)
                events[event["event"]] = event
                if event["event"] == "ready-for-restart":
                    proxy.armed = True
                    proc.stdin.write(b"armed\n")
                    await proc.stdin.drain()
            returncode = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    log = tmp_path / "server.log"
    assert returncode == 0, (
        f"scenarios failed after {list(events)}:\n{stderr_path.read_text()}\n"
        f"server log tail:\n{log.read_text()[-3000:] if log.exists() else ''}"
    )
    return events


async def check_charged_once(target: str, account: str) -> None:
    """Seen from outside the client venv, through the restarted server."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        reply = await stub.GetBalance(
            pb.GetBalanceRequest(account_id=account, asset="crm_credits"), timeout=10
        )
    assert (reply.balance.available, reply.balance.settled) == (93, 7), reply.balance
