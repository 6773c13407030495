"""`python -m tests.bench.takeover`: how long writes stop when the writer is SIGKILLed.

Starts `--replicas` `ledger serve` processes on a fresh database, keeps
`--in-flight` Charges of 1 going through all of them (each retried with its
own key on UNAVAILABLE until answered), then `--kills` times: SIGKILL the
elected writer (found in the lease row), restart it, and measure the time
from the kill to the first Charge that a *new* writer acknowledged (its
term is checked in the lease row). At the end every acknowledged key must be
recorded exactly once and the account's settled total must equal their
number (0 acknowledged lost), and `ledger verify` must pass.

Prints one line per kill and a summary:
`takeover: median X s, max X s over N kills; acknowledged N, lost 0`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import grpc
from creditledger.v1 import ledger_pb2 as pb
from creditledger.v1.ledger_pb2_grpc import LedgerServiceStub

from tests.bench import database
from tests.bench.server import ServerUnderTest, free_port, ledger_cli

REPO = Path(__file__).resolve().parents[2]


class Replica:
    def __init__(self, url: str, log: Path, lease_s: float) -> None:
        self.internal = f"127.0.0.1:{free_port()}"
        args = ["--internal-listen", self.internal, "--writer-lease-s", str(lease_s)]
        self.server = ServerUnderTest(url, log, args)

    def start(self) -> None:
        self.server.start()

    def kill(self) -> None:
        os.kill(self.server.pid, signal.SIGKILL)
        if self.server._proc is not None:
            self.server._proc.wait()


async def lease_of(url: str) -> tuple[int, str]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow("SELECT term, address FROM writer_lease WHERE id = 1")
        assert row is not None
        return int(row["term"]), str(row["address"])
    finally:
        await conn.close()


async def main_async(ns: argparse.Namespace, url: str) -> int:
    out = Path(ns.out_dir)
    replicas = [Replica(url, out / f"takeover-{n}.log", ns.lease_s) for n in range(ns.replicas)]
    try:
        for r in replicas:
            await asyncio.to_thread(r.start)
        return await drive(ns, url, replicas)
    finally:
        for r in replicas:
            r.server.stop()


async def drive(ns: argparse.Namespace, url: str, replicas: list[Replica]) -> int:
    channels = [grpc.aio.insecure_channel(r.server.listen) for r in replicas]
    stubs = [LedgerServiceStub(ch) for ch in channels]
    account = f"takeover-{uuid.uuid4().hex[:8]}"
    await stubs[0].CreateAccount(pb.CreateAccountRequest(account_id=account))
    await stubs[0].Grant(
        pb.GrantRequest(account_id=account, asset="sms", amount=10**12, idempotency_key="g")
    )
    acked: list[str] = []
    # (monotonic time, term of the writer then) of every acknowledgement.
    ack_times: list[float] = []
    stop = False

    async def slot(n: int) -> None:
        i = n
        while not stop:
            key = uuid.uuid4().hex
            request = pb.ChargeRequest(
                account_id=account, asset="sms", amount=1, idempotency_key=key
            )
            while True:
                i += 1
                stub = stubs[i % len(stubs)]
                try:
                    await stub.Charge(request, timeout=10)
                    acked.append(key)
                    ack_times.append(time.monotonic())
                    break
                except grpc.aio.AioRpcError as err:
                    if err.code() not in (
                        grpc.StatusCode.UNAVAILABLE,
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                    ):
                        raise
                    await asyncio.sleep(0.02)

    slots = [asyncio.create_task(slot(n)) for n in range(ns.in_flight)]
    takeovers: list[float] = []
    try:
        await asyncio.sleep(2.0)
        for k in range(ns.kills):
            term, address = await lease_of(url)
            writer = next(r for r in replicas if r.internal == address)
            seen = len(ack_times)
            killed_at = time.monotonic()
            writer.kill()
            # The new writer's term, then its first acknowledgement after the kill.
            while True:
                new_term, _ = await lease_of(url)
                if new_term > term:
                    break
                await asyncio.sleep(0.01)
            # Acknowledgements already on the wire at the kill are the old writer's.
            while not any(t > killed_at + 0.05 for t in ack_times[seen:]):
                await asyncio.sleep(0.005)
            first_ack = next(t for t in ack_times[seen:] if t > killed_at + 0.05)
            takeovers.append(first_ack - killed_at)
            print(
                f"kill {k + 1}: term {term} -> {new_term}, writes again after {takeovers[-1]:.2f} s",
                flush=True,
            )
            await asyncio.to_thread(writer.start)
            await asyncio.sleep(1.0)
    finally:
        stop = True
        await asyncio.gather(*slots, return_exceptions=True)
    conn = await asyncpg.connect(url)
    try:
        recorded = await conn.fetchval(
            "SELECT count(*) FROM idempotency WHERE key = ANY($1::text[])", acked
        )
        settled = await conn.fetchval(
            "SELECT settled FROM balances WHERE account_id = $1 AND asset = 'sms'", account
        )
    finally:
        await conn.close()
    for ch in channels:
        await ch.close()
    lost = len(acked) - recorded
    print(f"acknowledged {len(acked)}, recorded {recorded}, settled {settled}", flush=True)
    verify = ledger_cli(["verify", "--database-url", url], Path(ns.out_dir) / "takeover-verify.log")
    print(
        f"takeover: median {statistics.median(takeovers):.2f} s, max {max(takeovers):.2f} s"
        f" over {len(takeovers)} kills; acknowledged {len(acked)}, lost {lost},"
        f" duplicated {settled - len(acked)}; verify exit {verify}",
        flush=True,
    )
    return 0 if lost == 0 and settled == len(acked) and verify == 0 else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.takeover", description=__doc__)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--in-flight", type=int, default=16)
    ap.add_argument("--lease-s", type=float, default=3.0)
    ap.add_argument("--database-url", default=os.environ.get("LEDGER_BENCH_DATABASE_URL"))
    ap.add_argument("--out-dir", default=str(REPO / "bench-results"))
    ns = ap.parse_args(argv)
    out = Path(ns.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pg = database.locate(ns.database_url, out / "pgdata")
    name = f"creditledger_takeover_{os.getpid()}"
    url = database.create_database(pg, name)
    try:
        return asyncio.run(main_async(ns, url))
    finally:
        database.drop_database(pg, name)


if __name__ == "__main__":
    sys.exit(main())
