"""`ledger serve --fronts 3` (issue 19): three processes on one port, one writer
among them, every front reaching it as a replica does; one /metrics for all;
SIGTERM drains them all."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from creditledger.v1.ledger_pb2_grpc import LedgerServiceStub

from tests.support import db as support_db
from tests.support.process import REPO, ServerProcess

pytestmark = pytest.mark.timeout(180)

FRONTS = 3
CHANNELS = 12  # separate connections, so the kernel spreads them over the fronts


@pytest.fixture
async def database() -> AsyncIterator[support_db.TestDatabase]:
    db = await support_db.TestDatabase.create("ledger_fronts")
    yield db
    await db.drop()


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def _samples(text: str, name: str) -> dict[str, float]:
    """{front: value} of metric `name`, summed over its other labels."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(rf'{name}\{{front="(\d+)"[^}}]*\}} (\S+)$', line)
        if match:
            out[match[1]] = out.get(match[1], 0.0) + float(match[2])
    return out


async def test_fronts_share_the_port_and_one_of_them_writes(
    database: support_db.TestDatabase, tmp_path: Any
) -> None:
    server = ServerProcess(
        database.url,
        extra_args=["--fronts", str(FRONTS), "--log-format", "text"],
        log_path=tmp_path / "fronts.log",
    )
    await asyncio.to_thread(server.start, 60.0)
    # SERVING on the port means one front is up; wait for all of them (each imports
    # and starts on its own) before opening the connections the kernel will spread.
    deadline = asyncio.get_running_loop().time() + 90
    while True:
        serving = _samples(
            await asyncio.to_thread(_scrape, server.metrics_url), "ledger_health_serving"
        )
        if sum(serving.values()) == FRONTS:
            break
        assert asyncio.get_running_loop().time() < deadline, f"fronts serving: {serving}"
        await asyncio.sleep(0.2)
    local = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own each
    channels = [grpc.aio.insecure_channel(server.target, options=local) for _ in range(CHANNELS)]
    try:
        stubs = [LedgerServiceStub(ch) for ch in channels]
        account = f"fronts-{uuid.uuid4().hex[:8]}"
        await stubs[0].CreateAccount(pb.CreateAccountRequest(account_id=account))
        await stubs[0].Grant(
            pb.GrantRequest(account_id=account, asset="sms", amount=1000, idempotency_key="g")
        )
        charges = 120
        await asyncio.gather(
            *(
                stubs[n % CHANNELS].Charge(
                    pb.ChargeRequest(
                        account_id=account, asset="sms", amount=1, idempotency_key=f"c{n}"
                    ),
                    timeout=30,
                )
                for n in range(charges)
            )
        )
        reply = await stubs[-1].GetBalance(pb.GetBalanceRequest(account_id=account, asset="sms"))
        assert reply.balance.settled == charges

        text = await asyncio.to_thread(_scrape, server.metrics_url)
        leaders = _samples(text, "ledger_writer_leader")
        assert sorted(leaders) == [str(n) for n in range(FRONTS)], "every front on one scrape"
        assert sum(leaders.values()) == 1, "exactly one writer among the fronts"
        handled = _samples(text, "grpc_server_handled_total")
        assert sum(handled.values()) >= charges + 3
        assert sum(1 for v in handled.values() if v > 0) >= 2, (
            f"one port, several fronts: {handled}"
        )
        forwarded = _samples(text, "ledger_forwarded_commands_total")
        assert sum(forwarded.values()) > 0, "the fronts that are not the writer forwarded"
    finally:
        for ch in channels:
            await ch.close()
    assert await asyncio.to_thread(server.stop, 40.0) == 0, "SIGTERM drains every front"
    assert server.proc is not None
    ps = subprocess.run(["pgrep", "-P", str(server.proc.pid)], capture_output=True, text=True)
    assert ps.stdout.strip() == "", "no front outlives the supervisor"
    result = subprocess.run(
        [sys.executable, "-m", "ledger", "verify", "--database-url", database.url],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
